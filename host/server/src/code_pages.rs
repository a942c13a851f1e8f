//! Hands back the resident pages of the program's own machine code once the
//! node has started. Loading and optimizing models runs code (the ONNX
//! parser, tract's type analysis and optimizer passes) that serving never
//! runs again: for EfficientNet-Lite0 alone it left 10.5 MiB of the
//! binary resident. The pages stay in the page cache, and whatever code a
//! request runs faults back in from there, without reading the disk.

/// Drops the resident pages of the executable's code mappings. Only the
/// read-and-execute mappings of the program's own file are touched: they
/// are never written, so dropping their pages loses nothing. Returns the
/// bytes of the mappings released; on any failure, releases what it can
/// and says nothing, since this only saves memory.
pub fn release() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
        let mut released = 0;
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
            // Offset, device and inode, then the path.
            let path = fields.nth(3);
            if perms != "r-xp" || path.map(std::path::Path::new) != Some(exe.as_path()) {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            // SAFETY: the range is a private, read-only, executable mapping
            // of the program's own file, as the kernel lists it; its pages
            // were never written, so MADV_DONTNEED only unmaps them, and the
            // next access maps them again from the file's page cache.
            let outcome = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            if outcome == 0 {
                released += end - start;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_code_runs_on_after_its_pages_are_released() {
        let sum = |n: u64| (1..=n).map(|i| i * i).sum::<u64>();
        let before = sum(1000);
        assert!(super::release() > 0, "the program has code mappings to release");
        // The code released is this test's too: it must fault back in.
        assert_eq!(sum(1000), before);
        assert_eq!(format!("{before}"), "333833500");
    }
}
