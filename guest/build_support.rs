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
    for watched in ["sdk", "examples", "test-programs", "Cargo.toml", "Cargo.lock", "build_support.rs"] {
        println!("cargo:rerun-if-changed={}", guest.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());

    // One target directory for every build script that builds guests, so
    // that the guest SDK and its dependencies compile once.
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out_dir.ancestors().nth(4).map_or_else(|| out_dir.join("guests"), |t| t.join("guests"));

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
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
