//! The crate graph is the architecture (`docs/ARCHITECTURE.md`, "Layered
//! crates"): read from `cargo metadata`, each of the host's crates reaches
//! only the layers below it, the declaration crates build without the
//! runtime, and only the server speaks HTTP.

use mantle_tests::repo_root;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Every package's name, and the names of the packages it depends on for
/// building (not for tests or build scripts), from the resolved graph.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    // This machine's platform only: its packages are the ones the build
    // has downloaded, so no network is needed.
    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc -vV runs");
    let rustc = String::from_utf8_lossy(&rustc.stdout).into_owned();
    let host = rustc.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc names its host");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", host])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let name_of: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("an id"), p["name"].as_str().expect("a name")))
        .collect();
    let mut graph = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("a resolved graph") {
        let deps = node["deps"].as_array().expect("deps");
        let normal = deps
            .iter()
            .filter(|dep| {
                let kinds = dep["dep_kinds"].as_array().expect("dep kinds");
                kinds.iter().any(|k| k["kind"].is_null())
            })
            .map(|dep| name_of[dep["pkg"].as_str().expect("a package id")].to_owned())
            .collect();
        graph.insert(name_of[node["id"].as_str().expect("an id")].to_owned(), normal);
    }
    graph
}

/// Everything `package` builds with, itself excluded.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>, package: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![package.to_owned()];
    while let Some(name) = next.pop() {
        for dep in &graph[&name] {
            if seen.insert(dep.clone()) {
                next.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn each_crate_reaches_only_the_layers_below_it() {
    let graph = graph();
    // Bottom to top; a crate may depend on those before it, never after.
    let layers = [
        "mantle-types",
        "mantle-manifest",
        "mantle-bundle",
        "mantle-oci",
        "mantle-models",
        "mantle-runtime",
        "mantle-node",
        "mantle-server",
        "mantle",
    ];
    for (at, layer) in layers.iter().enumerate() {
        let reached = reach(&graph, layer);
        for above in &layers[at..] {
            assert!(!reached.contains(*above), "{layer} depends on {above}, a layer at or above it");
        }
    }
    for declarations in ["mantle-types", "mantle-manifest"] {
        let heavy: Vec<_> = reach(&graph, declarations)
            .into_iter()
            .filter(|dep| dep.starts_with("wasmtime") || dep.starts_with("tract") || dep.starts_with("cranelift"))
            .collect();
        assert!(heavy.is_empty(), "{declarations} builds with {heavy:?}");
    }
    for layer in ["mantle-bundle", "mantle-oci", "mantle-models"] {
        let runtime: Vec<_> = reach(&graph, layer).into_iter().filter(|dep| dep.starts_with("wasmtime")).collect();
        assert!(runtime.is_empty(), "{layer} builds with {runtime:?}");
    }
    for layer in layers {
        let http: Vec<_> =
            graph[layer].iter().filter(|dep| ["axum", "hyper", "hyper-util"].contains(&dep.as_str())).collect();
        assert!(
            layer == "mantle-server" || http.is_empty(),
            "{layer} depends on {http:?}: only the server speaks HTTP"
        );
    }
    assert!(graph["mantle-server"].contains("axum"), "the server is the crate with axum");
}
