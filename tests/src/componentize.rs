//! Guests written in Python and JavaScript, built as their authors build
//! them: with `componentize-py` from PyPI (pinned in
//! `guest/python/requirements.txt`) and `componentize-js` from npm (locked
//! in `guest/js/package-lock.json`), against the repository's `wit/` and
//! its guest packages. A component is built once and kept under the
//! target directory, named by the digest of everything that goes into it,
//! so that a test run after an unchanged one builds nothing.

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
    let inputs =
        ["guest/python/requirements.txt", "wit", guest.app_dir].into_iter().chain(guest.search_path.iter().copied());
    built_once(guest.name, inputs, |out| {
        let mut command = Command::new(componentize_py());
        command.current_dir(repo_root()).args(["-d", "wit", "-w", "guest", "componentize", "app", "-p", guest.app_dir]);
        for path in guest.search_path {
            command.args(["-p", path]);
        }
        command.arg("-o").arg(out);
        command
    })
}

/// The JavaScript guests of the repository: the build script, under
/// `guest/js/`, and the files it reads besides `guest/js/` and `wit/`.
pub struct JavaScriptGuest {
    pub name: &'static str,
    pub script: &'static str,
    pub vocabulary: &'static str,
}

/// `guest/js/examples/text-embed`: the text-embed example in JavaScript.
pub const JAVASCRIPT_TEXT_EMBED: JavaScriptGuest = JavaScriptGuest {
    name: "text-embed-js",
    script: "examples/text-embed/build.mjs",
    vocabulary: "models/minilm-l6/vocab.txt",
};

/// The component of `guest`, built now unless a build of the same inputs
/// is already there. Its sources are copied beside the packages of
/// `guest/js/package-lock.json`, installed under the target directory,
/// where they resolve `@bytecodealliance/componentize-js`.
pub fn javascript_guest(guest: &JavaScriptGuest) -> PathBuf {
    built_once(guest.name, ["guest/js", "wit", guest.vocabulary], |out| {
        let tools = crate::npm_installed("guest/js", "javascript-guest-tools");
        let sources = tools.join("src");
        let _ = std::fs::remove_dir_all(&sources);
        copy_tree(&repo_root().join("guest/js"), &sources);
        let mut command = Command::new("node");
        command.arg(sources.join(guest.script)).arg("-o").arg(out);
        command.arg("--wit").arg(repo_root().join("wit"));
        command.arg("--vocab").arg(repo_root().join(guest.vocabulary));
        command
    })
}

/// The component `name`, kept under the target directory by the digest of
/// `inputs` (files or directories, from the repository root); built by the
/// command `build` makes for an output path, when it is not there.
fn built_once<'a>(
    name: &str,
    inputs: impl IntoIterator<Item = &'a str>,
    build: impl FnOnce(&Path) -> Command,
) -> PathBuf {
    // One build at a time: each takes both cores, and tests that want the
    // same guest wait for the one build of it.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());

    let root = repo_root();
    let mut digest = Sha256::new();
    for input in inputs {
        digest_path(&mut digest, root, &root.join(input));
    }
    let dir = target_dir().join("language-guests");
    let wasm = dir.join(format!("{name}-{}.wasm", hex::encode(&digest.finalize()[..8])));
    if wasm.exists() {
        return wasm;
    }
    std::fs::create_dir_all(&dir).expect("create the guests' directory");
    let partial = wasm.with_extension("partial");
    let mut command = build(&partial);
    let built = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        built.status.success(),
        "the build of {name} failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&partial, &wasm).expect("keep the built component");
    wasm
}

/// Feeds the names (from `root`) and contents of `path`, or of every file
/// under it, in a fixed order, into `digest`; Python's caches and installed
/// npm packages are left out.
fn digest_path(digest: &mut Sha256, root: &Path, path: &Path) {
    if !path.is_dir() {
        digest.update(path.strip_prefix(root).unwrap_or(path).to_string_lossy().as_bytes());
        digest.update(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        return;
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.file_name().is_some_and(|name| name != "__pycache__" && name != "node_modules"))
        .collect();
    entries.sort();
    for entry in entries {
        digest_path(digest, root, &entry);
    }
}

/// Copies the files under `from` to `to`, leaving installed packages out.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let path = entry.expect("a directory entry").path();
        let Some(name) = path.file_name() else { continue };
        if name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(name));
        } else {
            std::fs::copy(&path, to.join(name)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
