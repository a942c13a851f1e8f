//! Hostile and curious guests: each is stopped or finds nothing, with a
//! clear error, and the node keeps serving the next request.

use mantle::runtime::{HandleError, ModuleLimits, ModuleSpec};
use mantle_tests::{Node, http_status, node, post, programs};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A well-behaved request after a hostile one still gets its answer.
async fn next_request_succeeds(node: &Node) {
    let echo = node.program(programs::ECHO, "neighbour", &[], ModuleLimits::default());
    let answer = node.call_json(&echo, post(b"still here".to_vec())).await;
    assert_eq!(answer["body_len"], 10);
}

/// Calls `program` with a short deadline and checks that the deadline, and
/// nothing else, ended the call with a 504.
async fn assert_stopped_by_deadline(program: &str) {
    let node = node();
    let deadline = Duration::from_millis(300);
    let module = node.program(program, "tenant-a", &[], ModuleLimits { deadline, ..Default::default() });
    let started = Instant::now();
    let error = node.call(&module, post(Vec::new())).await.expect_err("it never answers");
    assert!(matches!(error, HandleError::Deadline(d) if d == deadline), "{program}: {error:?}");
    assert_eq!(http_status(&error), 504);
    assert!(error.to_string().contains("deadline"), "{error}");
    // Generous: this proves the call ended, not how fast.
    assert!(started.elapsed() < Duration::from_secs(10), "stopped after {:?}", started.elapsed());
    next_request_succeeds(node).await;
}

#[tokio::test]
async fn a_looping_guest_is_stopped_by_its_deadline() {
    assert_stopped_by_deadline(programs::LOOP_FOREVER).await;
}

#[tokio::test]
async fn a_sleeping_guest_is_stopped_by_its_deadline() {
    assert_stopped_by_deadline(programs::SLEEP_FOREVER).await;
}

/// On a single-threaded executor, a looping guest still lets another
/// request run to completion: guests yield at every epoch tick.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_guest_does_not_hold_up_others_on_its_thread() {
    let node = node();
    let looping = node.program(
        programs::LOOP_FOREVER,
        "tenant-a",
        &[],
        ModuleLimits { deadline: Duration::from_secs(3), ..Default::default() },
    );
    let echo = node.program(programs::ECHO, "tenant-b", &[], ModuleLimits::default());
    let finished = std::sync::Mutex::new(Vec::new());
    let mark = |who: &'static str| finished.lock().unwrap_or_else(|p| p.into_inner()).push(who);
    tokio::join!(
        async {
            let error = node.call(&looping, post(Vec::new())).await.expect_err("stopped");
            assert!(matches!(error, HandleError::Deadline(_)), "{error:?}");
            mark("loop");
        },
        async {
            let answer = node.call_json(&echo, post(b"hello".to_vec())).await;
            assert_eq!(answer["tenant"], "tenant-b");
            mark("echo");
        },
    );
    assert_eq!(*finished.lock().unwrap_or_else(|p| p.into_inner()), ["echo", "loop"]);
}

#[tokio::test]
async fn a_memory_bomb_traps_at_its_cap() {
    let node = node();
    let cap = 32 << 20;
    let bomb =
        node.program(programs::MEMORY_BOMB, "tenant-a", &[], ModuleLimits { memory_bytes: cap, ..Default::default() });
    let error = node.call(&bomb, post(Vec::new())).await.expect_err("the bomb is stopped");
    match &error {
        HandleError::MemoryLimit { limit, wanted } => {
            assert_eq!(*limit, cap);
            assert!(*wanted > cap);
        }
        other => panic!("expected the memory limit, got {other:?}"),
    }
    assert_eq!(http_status(&error), 500);
    assert!(error.to_string().contains("memory"), "{error}");
    next_request_succeeds(node).await;
}

async fn probe(node: &Node, path: &str, body: Vec<u8>) -> Value {
    let prober =
        node.program(programs::NN_PROBE, "tenant-a", &["efficientnet-lite0", "minilm-l6"], ModuleLimits::default());
    let mut request = post(body);
    request.path = path.to_owned();
    node.call_json(&prober, request).await
}

#[tokio::test]
async fn only_granted_models_can_be_loaded() {
    let node = node();
    let granted = probe(node, "/load-by-name", b"efficientnet-lite0".to_vec()).await;
    assert_eq!(granted["loaded"], true, "{granted}");

    for name in ["silero-vad", "efficientnet-lite0@2", "../minilm-l6/model.onnx", "/etc/passwd"] {
        let refused = probe(node, "/load-by-name", name.as_bytes().to_vec()).await;
        assert_eq!(refused["loaded"], false, "{name}: {refused}");
        assert_eq!(refused["code"], "security", "{name}: {refused}");
    }
    let long_name = "m".repeat(10_000);
    let refused = probe(node, "/load-by-name", long_name.into_bytes()).await;
    assert_eq!(refused["code"], "invalid-argument", "{refused}");
    next_request_succeeds(node).await;
}

#[tokio::test]
async fn wrong_inputs_are_invalid_arguments_that_name_the_input() {
    let node = node();
    let right = probe(node, "/compute/right", Vec::new()).await;
    assert_eq!(right["loaded"], true, "a well-formed input runs: {right}");
    let cases = [
        ("wrong-shape", "invalid-argument", &["`input`", "[1, 3, 224, 224]", "[1, 3, 100, 100]"][..]),
        ("wrong-rank", "invalid-argument", &["`input`", "[3, 224, 224]"]),
        ("wrong-type", "invalid-argument", &["`input`", "FP32", "I64"]),
        ("wrong-name", "invalid-argument", &["`pixels`", "`input`"]),
        ("missing-input", "invalid-argument", &["`input`", "missing"]),
        ("short-data", "invalid-argument", &["`input`", "602112 bytes", "12"]),
        ("overflowing-shape", "invalid-argument", &["`input`", "too large"]),
        ("rank-1000", "invalid-argument", &["`input`", "rank 4", "not a shape of rank 1000"]),
        ("bf16", "unsupported-operation", &["`input`", "BF16"]),
        ("sequence-mismatch", "invalid-argument", &["`attention_mask`", "`sequence` is 5 in another input"]),
    ];
    for (case, code, needles) in cases {
        let outcome = probe(node, &format!("/compute/{case}"), Vec::new()).await;
        assert_eq!(outcome["loaded"], false, "{case}: {outcome}");
        assert_eq!(outcome["code"], code, "{case}: {outcome}");
        let message = outcome["message"].as_str().unwrap_or_default();
        for needle in needles {
            assert!(message.contains(needle), "{case}: {message:?} should mention {needle}");
        }
    }
    next_request_succeeds(node).await;
}

#[tokio::test]
async fn loading_raw_model_bytes_is_refused() {
    let node = node();
    let bytes = std::fs::read(mantle_tests::models_dir().join("silero-vad/model.onnx")).expect("a model file");
    let refused = probe(node, "/load", bytes).await;
    assert_eq!(refused["loaded"], false, "{refused}");
    assert_eq!(refused["code"], "security", "{refused}");
}

#[tokio::test]
async fn a_guest_finds_no_files_environment_arguments_or_network() {
    let node = node();
    let prober = node.program(programs::SANDBOX_PROBE, "tenant-a", &[], ModuleLimits::default());
    let findings = node.call_json(&prober, post(Vec::new())).await;
    for (path, outcome) in findings["reads"].as_array().expect("reads").iter().map(|r| (&r[0], &r[1])) {
        assert!(outcome.as_str().is_some_and(|o| o.starts_with("error")), "{path} was readable: {outcome}");
    }
    for (path, outcome) in findings["listings"].as_array().expect("listings").iter().map(|r| (&r[0], &r[1])) {
        assert!(outcome.as_str().is_some_and(|o| o.starts_with("error")), "{path} was listable: {outcome}");
    }
    for kind in ["connections", "lookups"] {
        let attempts = findings[kind].as_array().expect("attempts");
        assert!(!attempts.is_empty());
        for (target, outcome) in attempts.iter().map(|r| (&r[0], &r[1])) {
            assert!(
                outcome.as_str().is_some_and(|o| o.starts_with("error")),
                "{kind}: {target} was reachable: {outcome}"
            );
        }
    }
    assert_eq!(findings["env_vars"], 0, "{findings}");
    assert_eq!(findings["args"], 0, "{findings}");
    next_request_succeeds(node).await;
}

#[tokio::test]
async fn a_guest_sees_its_request_and_context() {
    let node = node();
    let echo = node.program(programs::ECHO, "tenant-b", &[], ModuleLimits::default());
    let mut request = post(b"12345".to_vec());
    request.method = "PUT".into();
    request.path = "/a/b".into();
    request.query = "x=1".into();
    request.headers = vec![("content-type".into(), b"text/plain".to_vec())];
    let answer = node.call_json(&echo, request).await;
    assert_eq!(answer["method"], "PUT");
    assert_eq!(answer["path"], "/a/b");
    assert_eq!(answer["query"], "x=1");
    assert_eq!(answer["headers"][0], serde_json::json!(["content-type", "text/plain"]));
    assert_eq!(answer["body_len"], 5);
    assert_eq!(answer["tenant"], "tenant-b");
    assert_eq!(answer["module"], "echo");
    assert_eq!(answer["request_id"], "test-request");
    assert_eq!(answer["greeting"], "hello from the operator");
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let node = node();
    let echo = node.program(programs::ECHO, "tenant-c", &[], ModuleLimits::default());
    for _ in 0..3 {
        let answer = node.call_json(&echo, post(Vec::new())).await;
        assert_eq!(answer["calls_in_this_instance"], 1, "state leaked between requests: {answer}");
    }
}

/// Modules of two tenants made from one component share its compiled
/// code and nothing else: each sees its own tenant, configuration and
/// grants, and no instance carries anything from one tenant to the other.
#[tokio::test]
async fn tenants_running_one_component_share_its_code_and_nothing_else() {
    let node = node();
    let spec = |tenant: &str, grants: &[&str]| ModuleSpec {
        id: "shared".to_owned(),
        tenant: tenant.to_owned(),
        grants: grants.iter().map(|name| ((*name).to_owned(), node.model(name))).collect(),
        limits: ModuleLimits::default(),
        config: [("greeting".to_owned(), format!("hello from {tenant}'s operator"))].into(),
    };
    let echo = std::fs::read(programs::ECHO).expect("the echo guest");
    let (first, _) = node.load_spec(spec("share-a", &[]), &echo);
    let (second, shared) = node.load_spec(spec("share-b", &[]), &echo);
    assert!(shared, "the second module of the same component compiled it again");
    for _ in 0..3 {
        for (module, tenant) in [(&first, "share-a"), (&second, "share-b")] {
            let answer = node.call_json(module, post(Vec::new())).await;
            assert_eq!(answer["tenant"], tenant, "{answer}");
            assert_eq!(answer["greeting"], format!("hello from {tenant}'s operator"), "{answer}");
            assert_eq!(answer["calls_in_this_instance"], 1, "an instance carried over: {answer}");
        }
    }

    let prober = std::fs::read(programs::NN_PROBE).expect("the probe guest");
    let (granted, _) = node.load_spec(spec("share-c", &["efficientnet-lite0"]), &prober);
    let (ungranted, shared) = node.load_spec(spec("share-d", &[]), &prober);
    assert!(shared);
    let mut load = post(b"efficientnet-lite0".to_vec());
    load.path = "/load-by-name".to_owned();
    let loaded = node.call_json(&granted, load.clone()).await;
    assert_eq!(loaded["loaded"], true, "{loaded}");
    let refused = node.call_json(&ungranted, load).await;
    assert_eq!(refused["code"], "security", "another tenant's grant came with the code: {refused}");
}
