//! Hands back the resident pages of the program's own read-only segments
//! (its machine code, constants and the embedded example guests) once the
//! node has loaded what it serves. Loading runs code (the ONNX parser,
//! tract's type analysis and optimizer passes) and reads data (the dynamic
//! loader's relocations, the guests it compiles) that serving never touches
//! again: for EfficientNet-Lite0 alone loading left 10.5 MiB of the binary
//! resident, and a node with the three examples kept 11 MiB of read-only
//! data. The pages stay in the page cache, and whatever a request runs or
//! reads faults back in from there, without reading the disk.

/// Drops the resident pages of the program's segments that are never
/// written: loadable, not writable, and not the RELRO range, which the
/// dynamic loader wrote before making it read-only. Dropping a page that
/// was never written loses nothing. Returns the bytes released; on any
/// failure, releases what it can and says nothing, since this only saves
/// memory.
pub fn release() -> usize {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        // A debugger's breakpoints are written into code pages: dropping
        // those pages would silently remove them.
        if traced() {
            return 0;
        }
        read_only_segments().into_iter().filter_map(|(start, end)| drop_pages(start, end)).sum()
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    0
}

/// Whether a debugger or tracer is attached to this process.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn traced() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return true };
    status.lines().find_map(|line| line.strip_prefix("TracerPid:")).is_none_or(|pid| pid.trim() != "0")
}

/// The page-aligned address ranges of the main program's read-only
/// segments, as its program headers give them.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn read_only_segments() -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    // SAFETY: `dl_iterate_phdr` calls `main_program` with each loaded
    // object's headers and the pointer given, which is `ranges`, alive for
    // the whole call and used by nothing else meanwhile.
    unsafe {
        libc::dl_iterate_phdr(Some(main_program), (&raw mut ranges).cast());
    }
    ranges
}

/// A `dl_iterate_phdr` callback: records the first object's read-only
/// segments in the `Vec<(usize, usize)>` behind `data`, then stops. The
/// first object glibc and musl report is the main program.
///
/// # Safety
/// `info` must be a valid `dl_phdr_info` and `data` a valid, exclusive
/// pointer to a `Vec<(usize, usize)>`.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
unsafe extern "C" fn main_program(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as this function's contract says.
    let (info, ranges) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
    if info.dlpi_phdr.is_null() {
        return 1;
    }
    // SAFETY: the loader's headers for this object: `dlpi_phnum` of them.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let page = page_size();
    let base = info.dlpi_addr as usize;
    // The pages a segment is mapped on: from the page of its first byte to
    // that of its last. Linkers place segments so that no two share a page.
    let pages = |header: &libc::Elf64_Phdr| {
        let start = base + header.p_vaddr as usize;
        (start / page * page, (start + header.p_memsz as usize).next_multiple_of(page))
    };
    let relro: Vec<(usize, usize)> = headers.iter().filter(|h| h.p_type == libc::PT_GNU_RELRO).map(pages).collect();
    for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) {
        let (start, end) = pages(header);
        // Were the RELRO range to share a page with it after all, that page
        // was written: the segment is left alone.
        let overlaps_relro = relro.iter().any(|&(from, to)| start < to && from < end);
        if start < end && !overlaps_relro {
            ranges.push((start, end));
        }
    }
    1
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(1)
}

/// Unmaps the pages of `start..end`; the bytes released, if any.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn drop_pages(start: usize, end: usize) -> Option<usize> {
    // SAFETY: the range is whole pages of a read-only segment of the
    // program's own file, never written (not RELRO, and no debugger is
    // attached); MADV_DONTNEED only unmaps them, and the next access maps
    // them again from the file's page cache.
    let outcome = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    (outcome == 0).then_some(end - start)
}

#[cfg(test)]
mod tests {
    /// Read-only data of this program, in a segment `release` drops.
    static TABLE: [u32; 4096] = {
        let mut table = [0; 4096];
        let mut i = 0;
        while i < table.len() {
            table[i] = (i * i) as u32;
            i += 1;
        }
        table
    };

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn code_and_constants_are_there_after_their_pages_are_released() {
        let sum = |n: u64| (1..=n).map(|i| i * i).sum::<u64>();
        let before = sum(1000);
        let table: u64 = std::hint::black_box(&TABLE).iter().map(|&v| u64::from(v)).sum();
        let released = super::release();
        assert!(released > 0, "the program has read-only segments to release");
        // The code and the table released are this test's too: both must
        // fault back in, the same bytes.
        assert_eq!(sum(1000), before);
        assert_eq!(format!("{before}"), "333833500");
        assert_eq!(std::hint::black_box(&TABLE).iter().map(|&v| u64::from(v)).sum::<u64>(), table);
        assert_eq!(table, (0..4096u64).map(|i| i * i).sum::<u64>());
    }

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn only_read_only_segments_of_the_program_are_released() {
        let segments = super::read_only_segments();
        let inside = |address: usize| segments.iter().any(|&(start, end)| start <= address && address < end);
        assert!(inside(TABLE.as_ptr() as usize), "the program's constants are among them");
        let code = only_read_only_segments_of_the_program_are_released as *const () as usize;
        assert!(inside(code), "and its code: {code:#x} in none of {segments:#x?}");
        let maps = std::fs::read_to_string("/proc/self/maps").expect("reading /proc/self/maps");
        let exe = std::fs::read_link("/proc/self/exe").expect("reading /proc/self/exe");
        for (start, end) in segments {
            // Each range lies in mappings of the program's file that cannot
            // be written.
            let covering: Vec<&str> = maps
                .lines()
                .filter(|line| {
                    let Some((from, to)) = line.split_whitespace().next().and_then(|r| r.split_once('-')) else {
                        return false;
                    };
                    let (from, to) =
                        (usize::from_str_radix(from, 16).unwrap_or(0), usize::from_str_radix(to, 16).unwrap_or(0));
                    from < end && start < to
                })
                .collect();
            assert!(!covering.is_empty(), "{start:#x}-{end:#x} is mapped");
            for line in covering {
                let perms = line.split_whitespace().nth(1).unwrap_or("");
                assert!(!perms.contains('w'), "{line} is writable");
                assert!(line.ends_with(exe.to_string_lossy().as_ref()), "{line} is not the program's file");
            }
        }
    }
}
