//! The try-it page and the operator console, used as a person uses them:
//! in Debian's headless Chromium, against a real node on a loopback port.
//! `tests/browser/pages.mjs` drives the pages; these tests start the node,
//! set up what the pages need through the CLI, and hand it over.

use super::deploy::{OPERATOR_TOKEN, TENANT_KEY, deploy, greeter, greeting, node_config, pack};
use mantle_tests::browser::{artifacts_dir, run_pages};
use mantle_tests::models_dir;
use mantle_tests::served::ServedNode;
use std::time::Duration;

#[test]
fn the_try_it_page_classifies_compares_and_finds_speech_in_chromium() {
    let node = ServedNode::demo();
    let options = serde_json::json!({
        "scenario": "try",
        "base": node.base(),
        "samples": models_dir().join("samples"),
        "artifacts": artifacts_dir(),
    });
    run_pages(&options, Duration::from_secs(300));
}

#[test]
fn the_console_rolls_a_deployment_back_and_the_page_sees_the_answer_change() {
    let root = tempfile::tempdir().expect("a temp dir");
    let node = ServedNode::with_config_in(&node_config(&[]), &root.path().join("data"));
    for version in ["1", "2"] {
        let deployed = deploy(&node, &pack(&greeter(root.path(), version), None));
        assert_eq!(deployed.code, Some(0), "{}", deployed.stderr);
    }
    assert_eq!(greeting(&node), "version 2");
    let options = serde_json::json!({
        "scenario": "console",
        "base": node.base(),
        "artifacts": artifacts_dir(),
        "token": OPERATOR_TOKEN,
        "key": TENANT_KEY,
        "tenant": "acme",
        "deployment": "greeter",
        "module": "greet",
        "from": "2",
        "to": "1",
    });
    run_pages(&options, Duration::from_secs(300));
    // What the page did, the node did: version 1 serves.
    assert_eq!(greeting(&node), "version 1");
}
