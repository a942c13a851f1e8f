// Builds guest components for the host's and the tests' build scripts, in
// the manner of wasmtime's test-programs: a nested `cargo build` of the
// guest workspace for `wasm32-wasip2`. Included with `include!`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` of the guest workspace and returns each package's
/// component path, in order.
fn build_guests(packages: &[&str]) -> Vec<PathBuf> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.parent().expect("the crate lives one level below the repository root");
    let guest = repo.join("guest");
    // Watch only what these packages are built from, so that editing one
    // kind of guest does not rebuild the crates that embed the other kind.
    for watched in ["sdk", "Cargo.toml", "Cargo.lock", ".cargo", "build_support.rs"] {
        println!("cargo:rerun-if-changed={}", guest.join(watched).display());
    }
    for package in packages {
        let dir = ["examples", "test-programs"]
            .iter()
            .map(|kind| guest.join(kind).join(package))
            .find(|dir| dir.is_dir())
            .unwrap_or_else(|| panic!("no guest package directory for {package}"));
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());

    // One target directory for every build script that builds guests, so
    // that the guest SDK and its dependencies compile once.
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out_dir.ancestors().nth(4).map_or_else(|| out_dir.join("guests"), |t| t.join("guests"));

    // The guests build with the host's toolchain, unless
    // MANTLE_GUEST_TOOLCHAIN names another: a nightly host build (cargo
    // fuzz) may have no wasm32-wasip2 target installed.
    println!("cargo:rerun-if-env-changed=MANTLE_GUEST_TOOLCHAIN");
    let mut command = match std::env::var_os("MANTLE_GUEST_TOOLCHAIN") {
        Some(toolchain) => {
            let mut rustup_cargo = Command::new("cargo");
            rustup_cargo.env("RUSTUP_TOOLCHAIN", toolchain).env_remove("RUSTC").env_remove("RUSTDOC");
            rustup_cargo
        }
        None => Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
    };
    command
        .current_dir(&guest)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build do not apply to wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().unwrap_or_else(|e| panic!("cannot run cargo to build the guests: {e}"));
    if !status.success() {
        panic!(
            "building the guests failed (see the cargo output above). If it says the \
             `wasm32-wasip2` target may not be installed, run: rustup target add wasm32-wasip2"
        );
    }
    packages
        .iter()
        .map(|package| {
            let path = target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", package.replace('-', "_")));
            assert!(Path::new(&path).exists(), "cargo built no component at {}", path.display());
            path
        })
        .collect()
}

/// Writes `file` in `OUT_DIR` with one constant per package, named after the
/// package in upper case and valued by `value(path of its component)`.
fn write_constants(file: &str, packages: &[&str], paths: &[PathBuf], value: impl Fn(&str) -> String) {
    let mut code = String::new();
    for (package, path) in packages.iter().zip(paths) {
        let constant = package.to_uppercase().replace('-', "_");
        code.push_str(&format!("pub const {constant}: {};\n", value(&path.display().to_string())));
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join(file), code).unwrap_or_else(|e| panic!("cannot write {file}: {e}"));
}
