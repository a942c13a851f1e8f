//! The Kubernetes manifests in `deploy/k8s/`: valid against the
//! Kubernetes schemas, clean under checkov (every skipped check says why
//! in the manifest), locked down, and with a shutdown that fits the node's
//! drain.

use mantle_tests::repo_root;
use mantle_tests::served::deploy_python;
use std::process::Command;

fn manifests() -> Vec<std::path::PathBuf> {
    let dir = repo_root().join("deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files
}

/// A program of the deploy venv, run to its end.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let bin = deploy_python().parent().expect("the venv's bin").join(program);
    // Checkov asks a vendor's API for check metadata unless told not to;
    // these tests reach nothing past loopback.
    Command::new(&bin)
        .args(args)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let files = manifests();
    let mut args: Vec<&std::ffi::OsStr> = vec!["--strict".as_ref(), "-k".as_ref(), "1.33.0".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = run("kubernetes-validate", &args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    // One line per resource, each passed.
    let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
    assert!(passed >= files.len(), "{text}");
    assert!(!text.contains("failed"), "{text}");
}

#[test]
fn checkov_finds_nothing_that_is_not_explained() {
    let dir = repo_root().join("deploy/k8s");
    let args = ["-d".as_ref(), dir.as_os_str(), "--framework".as_ref(), "kubernetes".as_ref()];
    let mut args: Vec<&std::ffi::OsStr> = args.to_vec();
    args.extend(["-o", "json", "--quiet", "--skip-download"].map(std::ffi::OsStr::new));
    let out = run("checkov", &args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let summary = &report["summary"];
    let failed = report["results"]["failed_checks"].as_array().map_or(0, Vec::len);
    assert_eq!(summary["failed"], 0, "checkov failed {failed} checks: {}", report["results"]["failed_checks"]);
    assert!(summary["passed"].as_u64().is_some_and(|n| n > 100), "{summary}");
    for skipped in report["results"]["skipped_checks"].as_array().into_iter().flatten() {
        let why = skipped["check_result"]["suppress_comment"].as_str().unwrap_or_default();
        assert!(why.len() > 20, "{} is skipped without a reason: {skipped}", skipped["check_id"]);
    }
    eprintln!("checkov: {summary}");
}

#[test]
fn the_pods_are_locked_down_and_their_shutdown_fits_the_nodes_drain() {
    let script = repo_root().join("tests/python/k8s_facts.py");
    let dir = repo_root().join("deploy/k8s");
    let out = Command::new(deploy_python()).arg(&script).arg(&dir).output().expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON facts");
    // The ConfigMap's node.toml is one the node takes.
    let toml = facts["node_toml"].as_str().expect("a node.toml in a ConfigMap");
    let config = mantle::manifest::node::NodeConfig::parse(toml, &dir).unwrap_or_else(|e| panic!("node.toml: {e}"));
    let settings = config.settings();
    let workloads = facts["workloads"].as_array().expect("workloads");
    assert_eq!(workloads.len(), 2, "a DaemonSet and a Deployment");
    for pod in workloads {
        let kind = &pod["kind"];
        let grace_ms = pod["grace_seconds"].as_u64().expect("a grace period") * 1000;
        let pre_stop_ms = pod["pre_stop_seconds"].as_u64().expect("a preStop sleep") * 1000;
        // From the preStop hook to the node's exit, before SIGKILL.
        let needed = pre_stop_ms + settings.drain_ms + settings.shutdown_grace_ms;
        assert!(needed < grace_ms, "{kind}: {needed} ms of shutdown in a {grace_ms} ms grace period");
        assert!(settings.drain_ms > 0, "the node drains");
        assert_eq!(pod["readiness"], "/readyz", "{kind}");
        assert_eq!(pod["liveness"], "/healthz", "{kind}");
        let security = &pod["security"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{kind}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{kind}");
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{kind}");
        let pod_security = &pod["pod_security"];
        assert_eq!(pod_security["runAsNonRoot"], true, "{kind}");
        assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault", "{kind}");
    }
}
