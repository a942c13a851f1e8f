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
/// `tests/browser/package-lock.json` under the target directory, and
/// installed again when the lockfile changes.
fn node_modules() -> &'static Path {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        debian::program("node", "nodejs");
        debian::program("npm", "npm");
        let source = repo_root().join("tests/browser");
        let lock = std::fs::read_to_string(source.join("package-lock.json")).expect("read the browser tests' lockfile");
        let dir = target_dir().join("browser-tests");
        let stamp = dir.join("mantle-lockfile.json");
        let modules = dir.join("node_modules");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) && modules.exists() {
            return modules;
        }
        std::fs::create_dir_all(&dir).expect("create the browser tests' directory");
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(source.join(file), dir.join(file)).expect("copy the browser tests' package files");
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci of tests/browser failed");
        std::fs::write(&stamp, lock).expect("write the lockfile stamp");
        modules
    })
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
