//! Pre-initialized guests: the node runs a guest's initializer once, as it
//! makes the module, and every request starts from the snapshot taken
//! after it. The answers are those of a guest that builds its state on
//! every request; an initializer that fails refuses the module, clearly.

use mantle::examples::EXAMPLES;
use mantle::runtime::{ModuleLimits, ModuleSpec, Runtime, RuntimeConfig, SetupError};
use mantle_tests::{node, post, programs};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn spec(id: &str, tenant: &str, grants: &[&str], limits: ModuleLimits) -> ModuleSpec {
    let node = node();
    ModuleSpec {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        grants: grants.iter().map(|name| (name.to_string(), node.model(name))).collect(),
        limits,
        config: BTreeMap::from([("secret".to_owned(), format!("{tenant}'s secret"))]),
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

#[tokio::test]
async fn every_request_starts_from_the_initialized_snapshot_which_knows_no_tenant() {
    let node = node();
    let wasm = read(programs::INIT_PROBE);
    let (alpha, _) = node.load_spec(spec("probe", "alpha", &["minilm-l6"], ModuleLimits::default()), &wasm);
    let (beta, shared) = node.load_spec(spec("probe", "beta", &["minilm-l6"], ModuleLimits::default()), &wasm);
    assert!(shared, "the second tenant's module takes the first one's compiled snapshot");

    for (module, tenant) in [(&alpha, "alpha"), (&alpha, "alpha"), (&beta, "beta")] {
        let answer = node.call_json(module, post(Vec::new())).await;
        let initialized = &answer["initialized"];
        assert!(initialized.is_object(), "the initializer ran before the snapshot: {answer}");
        // The snapshot is shared by every tenant: it was made knowing none.
        assert_eq!(initialized["tenant"], "", "{answer}");
        assert_eq!(initialized["module"], "", "{answer}");
        assert_eq!(initialized["request"], "", "{answer}");
        assert_eq!(initialized["config"], serde_json::Value::Null, "{answer}");
        let model_error = initialized["model_error"].as_str().unwrap_or_default();
        assert!(model_error.contains("minilm-l6"), "no model can be loaded while initializing: {answer}");
        // Each request has a fresh instance: the count starts again.
        assert_eq!(answer["requests"], 1, "{answer}");
        assert_eq!(answer["tenant"], tenant, "{answer}");
        assert_eq!(answer["config"], format!("{tenant}'s secret"), "{answer}");
    }

    // A node told not to pre-initialize never runs the initializer.
    let runtime = Runtime::new(&RuntimeConfig { pre_initialize: false, ..RuntimeConfig::default() }).expect("runtime");
    let plain = runtime.load_module(spec("probe", "alpha", &[], ModuleLimits::default()), &wasm).expect("loads");
    let response = runtime.handle(&plain, post(Vec::new()), "plain").await.expect("answers");
    let answer: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    assert_eq!(answer["initialized"], serde_json::Value::Null, "{answer}");
    assert_eq!(answer["requests"], 1, "{answer}");
}

#[tokio::test]
async fn text_embed_from_its_snapshot_answers_the_same_bytes_as_without() {
    let node = node();
    let example = EXAMPLES.iter().find(|e| e.name == "text-embed").expect("the example");
    let runtime = Runtime::new(&RuntimeConfig { pre_initialize: false, ..RuntimeConfig::default() }).expect("runtime");
    let from_scratch = runtime
        .load_module(spec("text-embed", "demo", &["minilm-l6"], ModuleLimits::default()), example.wasm)
        .expect("loads");
    let long = "Edge nodes run models close to the data. ".repeat(40);
    for text in ["A cat sits on the mat", "naïve café — 東京 🚀", long.as_str(), "   "] {
        let snapshot = node.call(node.example("text-embed"), post(text.as_bytes().to_vec())).await;
        let scratch = runtime.handle(&from_scratch, post(text.as_bytes().to_vec()), "scratch").await;
        match (snapshot, scratch) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.status, 200, "{text:?}");
                assert_eq!((a.status, &a.headers, &a.body), (b.status, &b.headers, &b.body), "{text:?}");
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text:?}"),
            (a, b) => panic!("{text:?}: from the snapshot {a:?}, without {b:?}"),
        }
    }
}

/// Loads `path` for tenant `hostile` with `limits`, expecting the module
/// to be refused as one whose initializer failed; the refusal's text.
fn refused(path: &str, limits: ModuleLimits) -> String {
    let node = node();
    let started = Instant::now();
    let outcome = node.load(&read(path), "init", "hostile", limits);
    let elapsed = started.elapsed();
    match outcome {
        Err(error @ SetupError::Initialize { .. }) => {
            let text = error.to_string();
            assert!(text.contains("module `init` cannot be pre-initialized"), "{text}");
            assert!(elapsed < limits.deadline + Duration::from_secs(20), "refused after {elapsed:?}");
            text
        }
        Err(other) => panic!("expected the initializer's failure, got {other}"),
        Ok(_) => panic!("a module whose initializer fails was accepted"),
    }
}

#[tokio::test]
async fn an_initializer_that_traps_loops_or_hoards_refuses_the_module_and_the_node_serves_on() {
    let error = refused(programs::INIT_PANIC, ModuleLimits::default());
    assert!(error.contains("trapped") && error.contains("unreachable"), "{error}");

    let small = ModuleLimits { memory_bytes: 64 << 20, ..ModuleLimits::default() };
    let error = refused(programs::INIT_ENDLESS, small);
    assert!(error.contains("past its limit of 67108864 bytes"), "{error}");

    let roomy = ModuleLimits { memory_bytes: 256 << 20, deadline: Duration::from_secs(1) };
    let error = refused(programs::INIT_ENDLESS, roomy);
    assert!(error.contains("deadline of 1s"), "{error}");

    // Nothing was left behind: the examples still answer.
    let node = node();
    let answer = node.call_json(node.example("text-embed"), post(b"still here".to_vec())).await;
    assert_eq!(answer["dim"], 384);
}
