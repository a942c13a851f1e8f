//! The few settings of glibc's allocator the node changes, and handing
//! freed memory back to the system. Elsewhere (musl, other systems) each
//! is a no-op: their allocators keep no such reserves.

/// Blocks of `bytes` or more are mapped on their own, so that freeing one
/// unmaps it.
pub fn map_apart_from(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(libc::M_MMAP_THRESHOLD, bytes);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// The heap gives back its free top once it is `bytes` long or more.
pub fn trim_past(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(libc::M_TRIM_THRESHOLD, bytes);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Returns the memory every arena holds free to the system: after work
/// that allocated and freed a lot on several threads (loading models side
/// by side, a deploy), glibc would otherwise keep it.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has
    // no preconditions and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(setting: i32, bytes: i32) {
    // SAFETY: mallopt changes an allocator setting; it has no
    // preconditions and may be called at any time, from any thread.
    unsafe {
        libc::mallopt(setting, bytes);
    }
}
