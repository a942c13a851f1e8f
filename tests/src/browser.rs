//! Debian's Chromium driven by `playwright-core`: what the browser tests
//! run the pages in. `.ci/run` installs both; on a machine without them,
//! the tests install them when they can, as they install Debian's other
//! programs and `tritonclient`.

use crate::{debian, repo_root, run_limited, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The directory holding `playwright-core`'s `node_modules`, installed from
/// `tests/browser/package-lock.json` under the target directory.
fn node_modules() -> &'static Path {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED.get_or_init(|| crate::npm_installed("tests/browser", "browser-tests").join("node_modules"))
}

/// Where the browser tests leave their screenshots.
pub fn artifacts_dir() -> PathBuf {
    target_dir().join("browser-artifacts")
}

/// Runs `tests/browser/pages.mjs` with `options` (its one JSON argument)
/// in headless Chromium (Debian's, at `/usr/bin/chromium`), within
/// `limit`, and fails the test with what it printed unless every check in
/// it held.
pub fn run_pages(options: &serde_json::Value, limit: Duration) {
    debian::program("chromium", "chromium");
    let mut command = Command::new("node");
    command
        .arg(repo_root().join("tests/browser/pages.mjs"))
        .arg(options.to_string())
        .env("MANTLE_NODE_MODULES", node_modules());
    let finished = run_limited(command, b"", limit);
    let printed = format!("{}{}", String::from_utf8_lossy(&finished.stdout), finished.stderr);
    assert_eq!(finished.code, Some(0), "the browser test failed:\n{printed}");
    print!("{printed}");
}
