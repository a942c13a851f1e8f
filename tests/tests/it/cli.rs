//! The `mantle` command as a user runs it: exit codes, stdin and stdout,
//! and the same bytes as the library gives.

use mantle_tests::{Finished, example_wasm, model_grant, models_dir, node, post, programs, run_mantle, sample};
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Runs `mantle` with `args`, feeding it `stdin`.
fn mantle(args: &[&str], stdin: &[u8]) -> Finished {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run_mantle(&args, stdin, LIMIT)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn run_gives_the_same_bytes_as_the_library() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let input = path(&models_dir().join("samples/chelsea.png"));
    // Pinned as the bundled example pins it, so that tract runs the same plan.
    let cli = mantle(
        &[
            "run",
            &module,
            "--model",
            &model_grant("efficientnet-lite0"),
            "--pin",
            "efficientnet-lite0:N=1",
            "--input",
            &input,
        ],
        b"",
    );
    assert_eq!(cli.code, Some(0), "stderr: {}", cli.stderr);

    let node = node();
    let library = node.call(node.example("image-classify"), post(sample("chelsea.png"))).await.expect("answered");
    assert_eq!(cli.stdout, library.body, "mantle run and the library answer the same bytes");
}

#[tokio::test]
async fn run_reads_stdin_and_writes_a_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "text-embed");
    let output = dir.path().join("embedding.json");
    let text = "A cat sits on the mat";
    let cli = mantle(
        &[
            "run",
            &module,
            "--model",
            &model_grant("minilm-l6"),
            "--pin",
            "minilm-l6:batch=1",
            "--output",
            &path(&output),
        ],
        text.as_bytes(),
    );
    assert_eq!(cli.code, Some(0), "stderr: {}", cli.stderr);
    assert!(cli.stdout.is_empty());

    let node = node();
    let library = node.call(node.example("text-embed"), post(text.as_bytes().to_vec())).await.expect("answered");
    assert_eq!(std::fs::read(&output).expect("the output file"), library.body);
}

#[test]
fn a_refused_request_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let jpeg = sample("chelsea.jpg");
    let cli = mantle(&["run", &module, "--model", &model_grant("efficientnet-lite0")], &jpeg[..jpeg.len() / 2]);
    assert_eq!(cli.code, Some(1), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("truncated"), "stderr: {}", cli.stderr);
    assert!(cli.stdout.is_empty());
}

#[test]
fn an_ungranted_model_is_a_guest_failure() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let model = format!("not-the-model={}", path(&models_dir().join("efficientnet-lite0/model.onnx")));
    let cli = mantle(&["run", &module, "--model", &model], &sample("coffee.png"));
    assert_eq!(cli.code, Some(1), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("not granted"), "stderr: {}", cli.stderr);
}

#[test]
fn a_missing_module_is_a_setup_error() {
    let cli = mantle(&["run", "/nonexistent/guest.wasm"], b"");
    assert_eq!(cli.code, Some(3), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("/nonexistent/guest.wasm"), "stderr: {}", cli.stderr);
}

#[test]
fn files_that_are_not_components_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases: [(&str, &[u8], &str); 2] = [
        ("notes.wasm", b"just some text", "not a WebAssembly file"),
        ("core.wasm", b"\0asm\x01\0\0\0", "core WebAssembly module, not a component"),
    ];
    for (name, bytes, reason) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).expect("write");
        let cli = mantle(&["run", &path(&file)], b"");
        assert_eq!(cli.code, Some(3), "{name}: {}", cli.stderr);
        assert!(cli.stderr.contains(reason), "{name}: {}", cli.stderr);
    }
}

#[test]
fn pinning_a_dimension_the_model_lacks_is_a_setup_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let cli = mantle(
        &["run", &module, "--model", &model_grant("efficientnet-lite0"), "--pin", "efficientnet-lite0:batch=1"],
        b"",
    );
    assert_eq!(cli.code, Some(3), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("`batch`") && cli.stderr.contains("\"N\""), "stderr: {}", cli.stderr);
}

#[test]
fn guest_output_goes_to_the_log_tagged_with_its_module() {
    let cli = mantle(&["run", programs::ECHO, "--config", "greeting=hi"], b"ping");
    assert_eq!(cli.code, Some(0), "stderr: {}", cli.stderr);
    let line = cli
        .stderr
        .lines()
        .find(|l| l.contains("echo wrote this line to stdout"))
        .unwrap_or_else(|| panic!("the guest's stdout is logged: {}", cli.stderr));
    for tag in ["mantle::guest", "tenant=local", "module=echo", "stream=\"stdout\""] {
        assert!(line.contains(tag), "{line:?} carries {tag}");
    }
    let answer: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("the response body is JSON");
    assert_eq!(answer["greeting"], "hi");
    assert_eq!(answer["body_len"], 4);
}

#[test]
fn help_explains_the_commands() {
    let top = mantle(&["--help"], b"");
    assert_eq!(top.code, Some(0));
    let text = String::from_utf8_lossy(&top.stdout);
    for expected in ["run", "demo", "Exit codes"] {
        assert!(text.contains(expected), "`mantle --help` mentions {expected}:\n{text}");
    }
    let sub = mantle(&["run", "--help"], b"");
    assert_eq!(sub.code, Some(0));
    let text = String::from_utf8_lossy(&sub.stdout);
    for expected in ["--model", "--input", "--output", "--pin", "NAME=PATH"] {
        assert!(text.contains(expected), "`mantle run --help` mentions {expected}:\n{text}");
    }
}
