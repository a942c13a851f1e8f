//! Debian's Chromium driven by `playwright-core`: what the browser tests
//! run the pages in. `.ci/run` installs both; on a machine without them,
//! the tests install them when they can, as they install Debian's other
//! programs and `tritonclient`.

use crate::{debian, repo_root, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
/// in headless Chromium, within `limit`, and fails the test with what it
/// printed unless every check in it held.
pub fn run_pages(options: &serde_json::Value, limit: Duration) {
    let chromium = debian::program("chromium", "chromium");
    let modules = node_modules();
    let script = repo_root().join("tests/browser/pages.mjs");
    // What it prints goes to a file: a pipe nobody reads until it exits
    // could fill and stop it.
    let log = tempfile::NamedTempFile::new().expect("a temp file");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(options.to_string())
        .env("MANTLE_NODE_MODULES", modules)
        .env("MANTLE_CHROMIUM", which(&chromium))
        .stdout(log.reopen().expect("reopen the log"))
        .stderr(log.reopen().expect("reopen the log"))
        .spawn()
        .expect("node runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(log.path()).unwrap_or_default();
    match status {
        Some(status) => assert!(status.success(), "the browser test failed:\n{printed}"),
        None => panic!("the browser test took over {limit:?}:\n{printed}"),
    }
    print!("{printed}");
}

/// The full path of `program`, found on PATH.
fn which(program: &Path) -> PathBuf {
    if program.is_absolute() {
        return program.to_owned();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{} is not on PATH", program.display()))
}
