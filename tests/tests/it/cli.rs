//! The `mantle` command as a user runs it: exit codes, stdin and stdout,
//! and the same bytes as the library gives.

use mantle::examples::EXAMPLES;
use mantle_tests::{Finished, models_dir, node, post, programs, run_mantle, sample};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Writes the bundled example `name` to `dir` as a .wasm file.
fn example_wasm(dir: &Path, name: &str) -> PathBuf {
    let example = EXAMPLES.iter().find(|e| e.name == name).expect("a bundled example");
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::write(&path, example.wasm).expect("write the module");
    path
}

fn grant(model: &str) -> String {
    format!("{model}={}", models_dir().join(model).join("model.onnx").display())
}

fn run(args: &[&OsStr], stdin: &[u8]) -> Finished {
    run_mantle(args, stdin, LIMIT)
}

#[tokio::test]
async fn run_gives_the_same_bytes_as_the_library() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let input = models_dir().join("samples/chelsea.png");
    let model = grant("efficientnet-lite0");
    // Pinned as the bundled example pins it, so that tract runs the same plan.
    let pin = OsStr::new("efficientnet-lite0:N=1");
    let cli = run(
        &[
            OsStr::new("run"),
            module.as_os_str(),
            OsStr::new("--model"),
            OsStr::new(&model),
            OsStr::new("--pin"),
            pin,
            OsStr::new("--input"),
            input.as_os_str(),
        ],
        b"",
    );
    assert_eq!(cli.code, Some(0), "stderr: {}", cli.stderr);

    let node = node();
    let library = node
        .call(node.example("image-classify"), post(sample("chelsea.png")))
        .await
        .expect("answered");
    assert_eq!(
        cli.stdout, library.body,
        "mantle run and the library answer the same bytes"
    );
}

#[tokio::test]
async fn run_reads_stdin_and_writes_a_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "text-embed");
    let output = dir.path().join("embedding.json");
    let model = grant("minilm-l6");
    let text = "A cat sits on the mat";
    let pin = OsStr::new("minilm-l6:batch=1");
    let cli = run(
        &[
            OsStr::new("run"),
            module.as_os_str(),
            OsStr::new("--model"),
            OsStr::new(&model),
            OsStr::new("--pin"),
            pin,
            OsStr::new("--output"),
            output.as_os_str(),
        ],
        text.as_bytes(),
    );
    assert_eq!(cli.code, Some(0), "stderr: {}", cli.stderr);
    assert!(cli.stdout.is_empty());

    let node = node();
    let library = node
        .call(node.example("text-embed"), post(text.as_bytes().to_vec()))
        .await
        .expect("answered");
    assert_eq!(std::fs::read(&output).expect("the output file"), library.body);
}

#[test]
fn a_refused_request_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let jpeg = sample("chelsea.jpg");
    let model = grant("efficientnet-lite0");
    let cli = run(
        &[
            OsStr::new("run"),
            module.as_os_str(),
            OsStr::new("--model"),
            OsStr::new(&model),
        ],
        &jpeg[..jpeg.len() / 2],
    );
    assert_eq!(cli.code, Some(1), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("truncated"), "stderr: {}", cli.stderr);
    assert!(cli.stdout.is_empty());
}

#[test]
fn an_ungranted_model_is_a_guest_failure() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let model = format!(
        "not-the-model={}",
        models_dir().join("efficientnet-lite0/model.onnx").display()
    );
    let cli = run(
        &[
            OsStr::new("run"),
            module.as_os_str(),
            OsStr::new("--model"),
            OsStr::new(&model),
        ],
        &sample("coffee.png"),
    );
    assert_eq!(cli.code, Some(1), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("not granted"), "stderr: {}", cli.stderr);
}

#[test]
fn a_missing_module_is_a_setup_error() {
    let cli = run(&[OsStr::new("run"), OsStr::new("/nonexistent/guest.wasm")], b"");
    assert_eq!(cli.code, Some(3), "stderr: {}", cli.stderr);
    assert!(cli.stderr.contains("/nonexistent/guest.wasm"), "stderr: {}", cli.stderr);
}

#[test]
fn files_that_are_not_components_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases: [(&str, &[u8], &str); 2] = [
        ("notes.wasm", b"just some text", "not a WebAssembly file"),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "core WebAssembly module, not a component",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let cli = run(&[OsStr::new("run"), path.as_os_str()], b"");
        assert_eq!(cli.code, Some(3), "{name}: {}", cli.stderr);
        assert!(cli.stderr.contains(reason), "{name}: {}", cli.stderr);
    }
}

#[test]
fn pinning_a_dimension_the_model_lacks_is_a_setup_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let module = example_wasm(dir.path(), "image-classify");
    let model = grant("efficientnet-lite0");
    let cli = run(
        &[
            OsStr::new("run"),
            module.as_os_str(),
            OsStr::new("--model"),
            OsStr::new(&model),
            OsStr::new("--pin"),
            OsStr::new("efficientnet-lite0:batch=1"),
        ],
        b"",
    );
    assert_eq!(cli.code, Some(3), "stderr: {}", cli.stderr);
    assert!(
        cli.stderr.contains("`batch`") && cli.stderr.contains("\"N\""),
        "stderr: {}",
        cli.stderr
    );
}

#[test]
fn guest_output_goes_to_the_log_tagged_with_its_module() {
    let cli = run(
        &[
            OsStr::new("run"),
            OsStr::new(programs::ECHO),
            OsStr::new("--config"),
            OsStr::new("greeting=hi"),
        ],
        b"ping",
    );
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
    let top = run(&[OsStr::new("--help")], b"");
    assert_eq!(top.code, Some(0));
    let text = String::from_utf8_lossy(&top.stdout);
    for expected in ["run", "demo", "Exit codes"] {
        assert!(text.contains(expected), "`mantle --help` mentions {expected}:\n{text}");
    }
    let sub = run(&[OsStr::new("run"), OsStr::new("--help")], b"");
    assert_eq!(sub.code, Some(0));
    let text = String::from_utf8_lossy(&sub.stdout);
    for expected in ["--model", "--input", "--output", "NAME=PATH"] {
        assert!(
            text.contains(expected),
            "`mantle run --help` mentions {expected}:\n{text}"
        );
    }
}
