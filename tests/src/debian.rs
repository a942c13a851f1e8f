//! Programs from Debian's packages that the tests run for real: the
//! registry, HAProxy, Prometheus. `.ci/run` installs them; on a machine
//! without them, the tests install the package themselves when they can
//! (as root with apt-get), as they install `tritonclient` into a venv.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// `program`, installing Debian's `package` first if it is missing.
pub fn program(program: &str, package: &str) -> PathBuf {
    static FOUND: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let found = found.get_or_insert_with(HashMap::new);
    if let Some(path) = found.get(program) {
        return path.clone();
    }
    let on_path = Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !on_path {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root && std::path::Path::new("/usr/bin/apt-get").exists(),
            "these tests need Debian's {package} package: apt-get install {package}"
        );
        for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "--no-install-recommends", package]] {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .expect("apt-get runs");
            assert!(status.success(), "apt-get {args:?} failed");
        }
    }
    found.insert(program.to_owned(), PathBuf::from(program));
    PathBuf::from(program)
}
