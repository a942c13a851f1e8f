//! The few settings of glibc's allocator the node changes, and handing
//! freed memory back to the system once the node has loaded what it
//! serves. Elsewhere (musl, other systems) each setting is a no-op: their
//! allocators keep no such reserves.

/// While the node loads what it serves (start-up, a deploy: bundles,
/// models, guests' compiled code), glibc maps every block of 1 MiB or more
/// on its own, so that freeing it gives it back. Loading holds bundles two
/// or three times over and compiled code as bytes before it is cached, and
/// glibc would otherwise keep those blocks in its arenas, among the blocks
/// that stay: a first start of the three examples was idle at 156 MiB
/// rather than 111, a deploy left the node tens of MiB larger.
///
/// When the last load in flight ends, the thresholds go where glibc's own
/// adjustment tops out (map apart from 32 MiB, trim the heap past 64 MiB
/// free), where the request path reuses blocks from the heap as it does by
/// default: a 4 MiB threshold kept for serving cost image-classify a third
/// of its throughput, and a fixed one with the default trim threshold
/// about a tenth. Then the free memory of every arena and the resident
/// pages of the code that loading ran ([`crate::code_pages`]) are handed
/// back.
///
/// Whoever starts a load holds a `Loading` across it, and across whatever
/// it records of the outcome (which then need not wait for the trim):
/// `mantle serve` while it builds the node and restores its deployments,
/// the admin API while it reads and deploys a bundle or pulls one, a
/// followed tag while it deploys a move. The node's own methods take none.
/// Loads may overlap: the thresholds go back when the last one ends.
pub struct Loading(());

/// Loads in flight. A lock rather than an atomic count, so that one ending
/// and another starting cannot set the thresholds out of order.
static IN_FLIGHT: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

impl Loading {
    /// Marks a load as started.
    pub fn start() -> Self {
        let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *in_flight == 0 {
            map_apart_from(1 << 20);
        }
        *in_flight += 1;
        Loading(())
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *in_flight = in_flight.saturating_sub(1);
        if *in_flight > 0 {
            return;
        }
        map_apart_from(32 << 20);
        trim_past(64 << 20);
        release_free_memory();
        let released = crate::code_pages::release();
        tracing::debug!(bytes = released, "loaded: released free memory and the resident pages of the node's code");
    }
}

/// Blocks of `bytes` or more are mapped on their own, so that freeing one
/// unmaps it.
fn map_apart_from(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(libc::M_MMAP_THRESHOLD, bytes);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// The heap gives back its free top once it is `bytes` long or more.
fn trim_past(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(libc::M_TRIM_THRESHOLD, bytes);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Returns the memory every arena holds free to the system: after work
/// that allocated and freed a lot on several threads (loading models side
/// by side, a deploy), glibc would otherwise keep it.
fn release_free_memory() {
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
