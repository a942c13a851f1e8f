//! Guests written in Python and JavaScript with the repository's guest
//! packages, built with `componentize-py` from PyPI and `componentize-js`
//! from npm: the text-embed examples served next to the Rust one and
//! giving the same embedding, the Python package's errors as statuses,
//! and a Python guest that misbehaves, stopped while a neighbour is
//! answered.

use mantle::runtime::{GuestModule, ModuleLimits, Request};
use mantle_tests::componentize::{
    JAVASCRIPT_TEXT_EMBED, PYTHON_PROBE, PYTHON_TEXT_EMBED, javascript_guest, python_guest,
};
use mantle_tests::served::{ServedNode, example_module, model_tables, tenant};
use mantle_tests::{http_status, mantle_binary, misbehaviour_is_stopped, model_grant, node, post, run_limited};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Duration;

const KEY: &str = "mk_python_0123456789abcdef";
const TEXT_MODEL: &str = "minilm-l6";

/// Texts that exercise every step of the tokenizer: accents, CJK, special
/// tokens written out, words past WordPiece's length, control and
/// zero-width characters, emoji, and a text past the model's 128 tokens.
fn texts() -> Vec<String> {
    [
        "A cat sits on the mat",
        "HÉLLO   wörld!!! naïve café — don't, can't; it's 3.14%",
        "東京 and 北京 are cities; 한국어 too",
        "a [MASK] in the middle, [CLS] and [SEP] written out, [UNK] and [mask]",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "tabs\tand\nnewlines\r\nand \u{200b}zero-width, a vertical\u{b}tab and control \u{7}\u{1c}",
        "ΣΊΣΥΦΟΣ and İstanbul, ﬁne ligatures, Ⅻ numerals",
        "emoji 🥰🚀 and symbols ©®™ ±≠ ½",
        &"x".repeat(120),
        &"Edge nodes run models close to the data, ".repeat(30),
    ]
    .iter()
    .map(|text| text.to_string())
    .collect()
}

fn embedding(answer: &Value, who: &str) -> Vec<f64> {
    assert_eq!(answer["dim"], 384, "{who}: {answer}");
    answer["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: {answer}"))
        .iter()
        .filter_map(Value::as_f64)
        .collect()
}

fn largest_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn the_python_and_javascript_text_embeds_serve_the_rust_examples_embedding() {
    let python = python_guest(&PYTHON_TEXT_EMBED);
    let javascript = javascript_guest(&JAVASCRIPT_TEXT_EMBED);
    let module = |id: &str, path: &std::path::Path| {
        format!("[[tenant.module]]\nid = \"{id}\"\npath = '{}'\nmodels = [\"{TEXT_MODEL}\"]\n\n", path.display())
    };
    let config = format!(
        "{}{}",
        model_tables(&[TEXT_MODEL]),
        tenant(
            "alpha",
            KEY,
            &[TEXT_MODEL],
            &[
                example_module("text-embed", "text-embed", &[TEXT_MODEL]),
                module("text-embed-py", &python),
                module("text-embed-js", &javascript),
            ]
            .concat()
        )
    );
    let served = ServedNode::with_config(&config);
    let others = ["text-embed-py", "text-embed-js"];
    for text in texts() {
        let rust = served.post("/t/alpha/text-embed", Some(KEY), text.as_bytes());
        assert_eq!(rust.status, 200, "{text:?}: {}", rust.text());
        let expected = embedding(&rust.json(), "rust");
        for other in others {
            let answer = served.post(&format!("/t/alpha/{other}"), Some(KEY), text.as_bytes());
            assert_eq!(answer.status, 200, "{other}, {text:?}: {}", answer.text());
            assert_eq!(answer.header("content-type"), Some("application/json"), "{other}");
            let worst = largest_difference(&expected, &embedding(&answer.json(), other));
            assert!(worst <= 1e-6, "{other}, {text:?}: the embeddings differ from Rust's by up to {worst}");
        }
    }
    // The same refusals as the Rust example, with the same statuses.
    for body in [&b""[..], b" \t\n", &[0xff, 0xfe, 0x00]] {
        for route in ["text-embed"].iter().chain(&others) {
            let answer = served.post(&format!("/t/alpha/{route}"), Some(KEY), body);
            assert_eq!(answer.status, 400, "{route}, {body:?}: {}", answer.text());
        }
    }

    // Offline, `mantle run` gives the node's answer; the second run loads
    // the code the first one compiled.
    let text = "The quick brown fox jumps over the lazy dog";
    let served_answer = served.post("/t/alpha/text-embed-py", Some(KEY), text.as_bytes()).json();
    let cache = tempfile::tempdir().expect("a temp dir");
    for cached in [false, true] {
        let mut command = std::process::Command::new(mantle_binary());
        command
            .arg("run")
            .arg(&python)
            .args(["--model", &model_grant(TEXT_MODEL), "--pin", "minilm-l6:batch=1", "--cache-dir"])
            .arg(cache.path())
            .env("MANTLE_LOG", "mantle=debug");
        let offline = run_limited(command, text.as_bytes(), Duration::from_secs(300));
        assert_eq!(offline.code, Some(0), "{}", offline.stderr);
        assert!(offline.stderr.contains(&format!("cached={cached}")), "{}", offline.stderr);
        let offline_answer: Value = serde_json::from_slice(&offline.stdout).expect("mantle run printed JSON");
        assert_eq!(offline_answer, served_answer);
    }
}

/// The probe, compiled once for the tests of this process, as a module of
/// `tenant-py` granted the image model, with a deadline short enough for
/// the loop to meet it soon.
fn probe() -> &'static GuestModule {
    static PROBE: OnceLock<GuestModule> = OnceLock::new();
    PROBE.get_or_init(|| {
        let limits = ModuleLimits { deadline: Duration::from_secs(3), ..ModuleLimits::default() };
        let path = python_guest(&PYTHON_PROBE);
        node().program(&path.display().to_string(), "tenant-py", &["efficientnet-lite0"], limits)
    })
}

fn at(path: &str, query: &str) -> Request {
    Request { path: path.to_owned(), query: query.to_owned(), ..post(b"hello".to_vec()) }
}

#[tokio::test]
async fn the_python_package_turns_errors_into_statuses() {
    let node = node();
    let probe = probe();
    let answer = node.call_json(probe, at("/whoami", "")).await;
    assert_eq!(answer["tenant"], "tenant-py");
    assert_eq!(answer["greeting"], "hello from the operator");
    assert_eq!(answer["request_id"], "test-request");
    assert_eq!(answer["body"], "hello");
    // Every request starts from the memory of the build: nothing counted
    // by an earlier one is seen.
    assert_eq!(answer["requests"], 1);
    assert_eq!(node.call_json(probe, at("/whoami", "")).await["requests"], 1);

    for (path, status, says) in [
        ("/invalid", 400, "this input will not do"),
        ("/media", 415, "send text/plain"),
        ("/raise", 500, "ValueError: the handler fell over"),
    ] {
        let error = node.call(probe, at(path, "")).await.expect_err(path);
        assert_eq!(http_status(&error), status, "{path}: {error}");
        assert_eq!(error.guest_message(), Some(says), "{path}");
    }

    // A granted model runs; any other is refused by the host as `security`.
    let ran = node.call_json(probe, at("/model", "name=efficientnet-lite0&shape=1,3,224,224")).await;
    assert_eq!(ran["logits"]["shape"], serde_json::json!([1, 1000]), "{ran}");
    assert_eq!(ran["logits"]["dtype"], "FP32");
    let refused = node.call(probe, at("/model", "name=minilm-l6")).await.expect_err("not granted");
    assert_eq!(http_status(&refused), 403, "{refused}");
    assert!(refused.to_string().contains("(security)"), "{refused}");
}

#[tokio::test]
async fn a_python_guest_that_misbehaves_is_stopped_and_its_neighbour_served() {
    misbehaviour_is_stopped(probe()).await;
}
