//! Guests written in Python, built as their authors build them: with
//! `componentize-py` from PyPI (pinned in `guest/python/requirements.txt`),
//! against the repository's `wit/` and its `mantle_guest` package. A
//! component is built once and kept under the target directory, named by
//! the digest of everything that goes into it, so that a test run after
//! an unchanged one builds nothing.

use crate::{repo_root, served, target_dir};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The Python guests of the repository: the app's directory, and the other
/// directories its build puts on the module search path (the package, and
/// data files it reads at build time).
pub struct PythonGuest {
    pub name: &'static str,
    pub app_dir: &'static str,
    pub search_path: &'static [&'static str],
}

/// `guest/python/examples/text-embed`: the text-embed example in Python.
pub const PYTHON_TEXT_EMBED: PythonGuest = PythonGuest {
    name: "text-embed-py",
    app_dir: "guest/python/examples/text-embed",
    search_path: &["guest/python", "models/minilm-l6"],
};

/// `guest/python/test-programs/probe`: answers, fails or misbehaves as
/// its path says.
pub const PYTHON_PROBE: PythonGuest =
    PythonGuest { name: "probe-py", app_dir: "guest/python/test-programs/probe", search_path: &["guest/python"] };

/// The `componentize-py` of a virtual environment under the target
/// directory, with `guest/python/requirements.txt` installed.
fn componentize_py() -> PathBuf {
    let python = served::python_with("guest/python/requirements.txt", "componentize-py-venv");
    python.parent().expect("the venv's bin directory").join("componentize-py")
}

/// The component of `guest`, built now unless a build of the same inputs
/// is already there.
pub fn python_guest(guest: &PythonGuest) -> PathBuf {
    // One build at a time: each takes both cores, and tests that want the
    // same guest wait for the one build of it.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());

    let root = repo_root();
    let mut inputs = Sha256::new();
    inputs.update(std::fs::read(root.join("guest/python/requirements.txt")).expect("the requirements"));
    for dir in ["wit", guest.app_dir].iter().chain(guest.search_path) {
        digest_tree(&mut inputs, root, &root.join(dir));
    }
    let digest = hex::encode(&inputs.finalize()[..8]);
    let dir = target_dir().join("language-guests");
    let wasm = dir.join(format!("{}-{digest}.wasm", guest.name));
    if wasm.exists() {
        return wasm;
    }
    std::fs::create_dir_all(&dir).expect("create the guests' directory");
    let partial = wasm.with_extension("partial");
    let mut command = Command::new(componentize_py());
    command.current_dir(root).args(["-d", "wit", "-w", "guest", "componentize", "app", "-p", guest.app_dir]);
    for path in guest.search_path {
        command.args(["-p", path]);
    }
    let built = command.arg("-o").arg(&partial).output().expect("componentize-py runs");
    assert!(
        built.status.success(),
        "componentize-py could not build {}:\n{}{}",
        guest.name,
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&partial, &wasm).expect("keep the built component");
    wasm
}

/// Feeds the names (from `root`) and contents of every file under `dir`,
/// in a fixed order, into `digest`; Python's caches are left out.
fn digest_tree(digest: &mut Sha256, root: &Path, dir: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.file_name().is_some_and(|name| name != "__pycache__"))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            digest_tree(digest, root, &path);
        } else {
            digest.update(path.strip_prefix(root).unwrap_or(&path).to_string_lossy().as_bytes());
            digest.update(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        }
    }
}
