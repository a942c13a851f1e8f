//! What each model costs in resident memory as the node holds it: loaded,
//! optimized and planned, then after one inference, against the size of
//! its file. Models stay loaded one after another, as in a node, and the
//! allocator returns what was freed before each reading, so that the
//! figures are what is held, not what loading left behind.

use std::path::Path;

/// This process's resident memory, in bytes, after handing freed memory
/// back to the system.
pub(crate) fn resident_bytes() -> anyhow::Result<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has no
    // preconditions and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    let kib: u64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("no VmRSS value"))?.parse()?;
    Ok(kib * 1024)
}

/// Bytes the allocator has handed out and not had back: what the program
/// holds, whatever pages it is spread over.
fn allocated_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        (info.uordblks + info.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

pub fn models(models_dir: &Path, shapes: &Path) -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::Map::new();
    let mut held = Vec::new();
    let baseline = resident_bytes()?;
    for (name, benched) in crate::benched_models(shapes)? {
        let file = std::fs::metadata(models_dir.join(&name).join("model.onnx"))?.len();
        let before = resident_bytes()?;
        let allocated_before = allocated_bytes();
        let (model, inputs) = crate::load(models_dir, &name, &benched)?;
        let loaded = resident_bytes()?;
        let allocated = allocated_bytes().saturating_sub(allocated_before);
        model.run(inputs)?;
        let ran = resident_bytes()?;
        report.insert(
            name,
            serde_json::json!({
                "file_bytes": file,
                "loaded_bytes": loaded.saturating_sub(before),
                "allocated_bytes": allocated,
                "after_run_bytes": ran.saturating_sub(before),
            }),
        );
        held.push(model);
    }
    report.insert("baseline_bytes".to_owned(), serde_json::json!(baseline));
    Ok(serde_json::Value::Object(report))
}
