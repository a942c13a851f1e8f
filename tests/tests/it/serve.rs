//! `mantle serve` as its users meet it: a real process on a loopback port,
//! real HTTP, the real `tritonclient`, and the same answers as `mantle run`.

use mantle_tests::served::{
    Reply, ServedNode, agent_trusting, example_module, key_sha256, model_tables, program_module, python, tenant,
};
use mantle_tests::{example_wasm, model_grant, node, programs, repo_root, run_mantle, sample};
use std::ffi::OsStr;
use std::time::{Duration, Instant};

const ALPHA_KEY: &str = "mk_alpha_0123456789abcdef";
const BETA_KEY: &str = "mk_beta_fedcba9876543210";
const IMAGE_MODEL: &str = "efficientnet-lite0";
const TEXT_MODEL: &str = "minilm-l6";
const SPEECH_MODEL: &str = "silero-vad";

fn assert_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
}

#[test]
fn the_demo_node_prints_a_curl_line_that_works_as_printed() {
    let node = ServedNode::demo();
    let banner: Vec<String> = std::iter::from_fn(|| Some(node.next_stdout_line(Duration::from_secs(10))))
        .take_while(|l| !l.starts_with("Stop"))
        .collect();
    let curl = banner
        .iter()
        .map(|line| line.trim())
        .find(|line| line.starts_with("curl "))
        .unwrap_or_else(|| panic!("the banner shows a curl line: {banner:#?}"));
    assert!(curl.contains(node.base()), "{curl} calls this node");
    node.wait_for_stderr("no API key", Duration::from_secs(10));

    // Exactly as printed, from where the README runs it.
    let output = std::process::Command::new("sh")
        .args(["-c", &format!("{curl} --silent --show-error --max-time 60")])
        .current_dir(repo_root())
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "{curl}: {}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("curl printed JSON");
    assert_eq!(answer["top"][0]["label"], "tiger cat", "{answer}");
}

#[test]
fn each_guest_route_answers_what_mantle_run_answers() {
    let config = format!(
        "{}{}",
        model_tables(&[IMAGE_MODEL, TEXT_MODEL, SPEECH_MODEL]),
        tenant(
            "alpha",
            ALPHA_KEY,
            &[IMAGE_MODEL, TEXT_MODEL, SPEECH_MODEL],
            &[
                example_module("image-classify", "image-classify", &[IMAGE_MODEL]),
                example_module("text-embed", "text-embed", &[TEXT_MODEL]),
                example_module("speech-detect", "speech-detect", &[SPEECH_MODEL]),
            ]
            .concat()
        )
    );
    let served = ServedNode::with_config(&config);
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases: [(&str, &str, Option<&str>, Vec<u8>); 4] = [
        ("image-classify", IMAGE_MODEL, Some("N=1"), sample("chelsea.png")),
        ("image-classify", IMAGE_MODEL, Some("N=1"), sample("coffee.png")),
        ("text-embed", TEXT_MODEL, Some("batch=1"), b"The quick brown fox jumps over the lazy dog".to_vec()),
        ("speech-detect", SPEECH_MODEL, None, sample("speech.wav")),
    ];
    for (example, model, pin, input) in cases {
        let over_http = served.post(&format!("/t/alpha/{example}"), Some(ALPHA_KEY), &input);
        assert_status(&over_http, 200, example);
        assert_eq!(over_http.header("content-type"), Some("application/json"), "{example}");

        let module = example_wasm(dir.path(), example);
        let grant = model_grant(model);
        let mut args = vec!["run", module.as_str(), "--model", grant.as_str()];
        let pin = pin.map(|p| format!("{model}:{p}"));
        if let Some(pin) = &pin {
            args.extend(["--pin", pin.as_str()]);
        }
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let offline = run_mantle(&args, &input, Duration::from_secs(120));
        assert_eq!(offline.code, Some(0), "{example}: {}", offline.stderr);
        assert_eq!(over_http.body, offline.stdout, "{example}: HTTP and `mantle run` answer the same bytes");
    }
}

#[test]
fn a_guest_route_passes_the_request_through_and_tags_it() {
    let config = tenant("alpha", ALPHA_KEY, &[], &program_module("echo", programs::ECHO, 10_000));
    let served = ServedNode::with_config(&config);
    let reply = served.send_with(
        "PUT",
        "/t/alpha/echo/photos/42?size=large&lang=en",
        Some(ALPHA_KEY),
        &[
            ("x-camera", "north-gate"),
            ("x-request-id", "trace-7"),
            ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
            ("keep-alive", "timeout=5"),
            ("connection", "x-hop"),
            ("x-hop", "for the next hop only"),
        ],
        b"twelve bytes",
    );
    assert_status(&reply, 200, "echo");
    let seen = reply.json();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/photos/42");
    assert_eq!(seen["query"], "size=large&lang=en");
    assert_eq!(seen["body_len"], 12);
    assert_eq!(seen["tenant"], "alpha");
    let headers = seen["headers"].as_array().expect("headers");
    let header = |name: &str| headers.iter().find(|h| h[0] == name).map(|h| h[1].clone());
    assert_eq!(header("x-camera"), Some("north-gate".into()));
    assert_eq!(header("authorization"), None, "the tenant's key never reaches the guest");
    for hop in ["proxy-authorization", "keep-alive", "connection", "x-hop"] {
        assert_eq!(header(hop), None, "the hop-by-hop `{hop}` reached the guest");
    }
    // The caller's request id is the one the guest and the logs see.
    assert_eq!(seen["request_id"], "trace-7");
    assert_eq!(reply.header("x-request-id"), Some("trace-7"));

    let fresh = served.post("/t/alpha/echo", Some(ALPHA_KEY), b"");
    let id = fresh.header("x-request-id").expect("every answer carries a request id").to_owned();
    assert_eq!(fresh.json()["request_id"], id.as_str());
    served.wait_for_stderr(&id, Duration::from_secs(10));
}

/// Two tenants: alpha holds the image model and a module that may not use
/// it; beta holds the text model.
fn two_tenants() -> String {
    format!(
        "{}{}{}",
        model_tables(&[IMAGE_MODEL, TEXT_MODEL]),
        tenant(
            "alpha",
            ALPHA_KEY,
            &[IMAGE_MODEL],
            &[
                example_module("image-classify", "image-classify", &[IMAGE_MODEL]),
                example_module("ungranted", "image-classify", &[]),
            ]
            .concat()
        ),
        tenant("beta", BETA_KEY, &[TEXT_MODEL], &example_module("text-embed", "text-embed", &[TEXT_MODEL])),
    )
}

#[test]
fn keys_and_grants_decide_who_reaches_what() {
    let served = ServedNode::with_config(&two_tenants());
    let photo = sample("chelsea.png");

    // No key, or a key no tenant has: 401, through both doors.
    for key in [None, Some("mk_not_a_key")] {
        let reply = served.post("/t/alpha/image-classify", key, &photo);
        assert_status(&reply, 401, "guest route");
        assert!(reply.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
        assert_status(&served.get(&format!("/v2/models/{IMAGE_MODEL}"), key), 401, "KServe");
    }

    // Another tenant's key: 403.
    let reply = served.post("/t/alpha/image-classify", Some(BETA_KEY), &photo);
    assert_status(&reply, 403, "beta calling alpha's module");
    assert!(reply.error().contains("alpha"), "{}", reply.text());

    // A model the tenant was not granted, through its guest and through KServe: 403.
    let reply = served.post("/t/alpha/ungranted", Some(ALPHA_KEY), &photo);
    assert_status(&reply, 403, "a guest loading an ungranted model");
    assert!(reply.error().contains(IMAGE_MODEL), "{}", reply.text());
    for path in [
        format!("/v2/models/{TEXT_MODEL}"),
        format!("/v2/models/{TEXT_MODEL}/ready"),
        format!("/v2/models/{IMAGE_MODEL}/versions/2"),
        "/v2/models/no-such-model".to_owned(),
    ] {
        let reply = served.get(&path, Some(ALPHA_KEY));
        assert_status(&reply, 403, &path);
        assert!(reply.error().contains("not granted"), "{path}: {}", reply.text());
    }
    let infer = br#"{"inputs":[{"name":"input_ids","shape":[1,2],"datatype":"INT64","data":[101,102]}]}"#;
    assert_status(&served.post(&format!("/v2/models/{TEXT_MODEL}/infer"), Some(ALPHA_KEY), infer), 403, "infer");

    // Each tenant still reaches its own.
    let reply = served.post("/t/alpha/image-classify", Some(ALPHA_KEY), &photo);
    assert_status(&reply, 200, "alpha's own module");
    assert_eq!(reply.json()["top"][0]["label"], "tiger cat");
    let reply = served.get(&format!("/v2/models/{TEXT_MODEL}"), Some(BETA_KEY));
    assert_status(&reply, 200, "beta's own model");
    assert_eq!(reply.json()["name"], TEXT_MODEL);
}

#[test]
fn kserve_errors_are_json_with_the_reason() {
    let served = ServedNode::with_config(&two_tenants());
    let infer = format!("/v2/models/{IMAGE_MODEL}/infer");
    let cases: [(&str, &[u8], &str); 4] = [
        ("not JSON", b"{\"inputs\": [", "not a valid inference request"),
        (
            "wrong shape",
            br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12]}]}"#,
            "input",
        ),
        (
            "data shorter than the shape",
            br#"{"inputs":[{"name":"input","shape":[1,3,224,224],"datatype":"FP32","data":[1,2]}]}"#,
            "input",
        ),
        ("unknown input", br#"{"inputs":[{"name":"pixels","shape":[1],"datatype":"FP32","data":[1]}]}"#, "pixels"),
    ];
    for (what, body, mentions) in cases {
        let reply = served.post(&infer, Some(ALPHA_KEY), body);
        assert_status(&reply, 400, what);
        assert!(reply.error().contains(mentions), "{what}: {}", reply.text());
    }
    // The node keeps serving.
    assert_status(&served.get(&format!("/v2/models/{IMAGE_MODEL}/ready"), Some(ALPHA_KEY)), 200, "ready");
}

#[test]
fn an_oversized_body_gets_413_and_the_tenant_goes_on() {
    let limits = "limits = { max_body_bytes = 4096 }\n";
    let config = format!(
        "{}{}",
        model_tables(&[IMAGE_MODEL]),
        tenant(
            "alpha",
            ALPHA_KEY,
            &[IMAGE_MODEL],
            &format!("{limits}{}", program_module("echo", programs::ECHO, 10_000))
        )
    );
    let served = ServedNode::with_config(&config);
    let big = vec![7u8; 64 * 1024];
    assert_status(&served.post("/t/alpha/echo", Some(ALPHA_KEY), &big), 413, "declared length");
    assert_status(&served.post_chunked("/t/alpha/echo", Some(ALPHA_KEY), &big), 413, "chunked");
    let reply = served.post(&format!("/v2/models/{IMAGE_MODEL}/infer"), Some(ALPHA_KEY), &big);
    assert_status(&reply, 413, "KServe");
    assert!(reply.error().contains("4096"), "{}", reply.text());

    let reply = served.post("/t/alpha/echo", Some(ALPHA_KEY), &big[..4096]);
    assert_status(&reply, 200, "a body at the limit");
    assert_eq!(reply.json()["body_len"], 4096);
}

#[test]
fn a_looping_guest_gets_504_while_another_tenant_is_served() {
    let config = format!(
        "{}{}{}",
        model_tables(&[TEXT_MODEL]),
        tenant("alpha", ALPHA_KEY, &[], &program_module("loop", programs::LOOP_FOREVER, 2_000)),
        tenant("beta", BETA_KEY, &[TEXT_MODEL], &example_module("text-embed", "text-embed", &[TEXT_MODEL])),
    );
    let served = ServedNode::with_config(&config);
    std::thread::scope(|scope| {
        let looping = scope.spawn(|| {
            let reply = served.post("/t/alpha/loop", Some(ALPHA_KEY), b"");
            (reply, Instant::now())
        });
        served.wait_for_metrics(Duration::from_secs(30), |m| {
            m.value("mantle_running_requests", &[("tenant", "alpha")]) == 1.0
        });
        let reply = served.post("/t/beta/text-embed", Some(BETA_KEY), b"a neighbour's sentence");
        let neighbour_done = Instant::now();
        assert_status(&reply, 200, "the neighbour");
        assert_eq!(reply.json()["embedding"].as_array().map(Vec::len), Some(384));

        let (reply, loop_done) = looping.join().expect("the looping request");
        assert_status(&reply, 504, "the looping guest");
        assert!(neighbour_done < loop_done, "the neighbour was answered while the loop still ran");
    });
}

#[test]
fn a_full_queue_answers_at_once_with_retry_after() {
    let limits = "limits = { max_concurrent = 1, max_queued = 1, queue_timeout_ms = 1500 }\n";
    let modules =
        [program_module("sleep", programs::SLEEP_FOREVER, 4_000), program_module("echo", programs::ECHO, 10_000)];
    let config = tenant("alpha", ALPHA_KEY, &[], &format!("{limits}{}", modules.concat()));
    let served = ServedNode::with_config(&config);
    std::thread::scope(|scope| {
        // One request holds the tenant's only turn, and one waits behind it.
        let running = scope.spawn(|| served.post("/t/alpha/sleep", Some(ALPHA_KEY), b""));
        served.wait_for_metrics(Duration::from_secs(30), |m| {
            m.value("mantle_running_requests", &[("tenant", "alpha")]) == 1.0
        });
        let queued = scope.spawn(|| served.post("/t/alpha/echo", Some(ALPHA_KEY), b""));
        served.wait_for_metrics(Duration::from_secs(30), |m| {
            m.value("mantle_queued_requests", &[("tenant", "alpha")]) == 1.0
        });

        // The queue is full: refused at once.
        let full = served.post("/t/alpha/echo", Some(ALPHA_KEY), b"");
        assert_status(&full, 429, "a full queue");
        assert!(!queued.is_finished(), "refused without waiting, while the queued request still waits");
        assert_eq!(full.header("retry-after"), Some("1"));

        // The waiting request gives up when its queue timeout passes.
        let timed_out = queued.join().expect("the queued request");
        assert_status(&timed_out, 503, "a queue timeout");
        assert_eq!(timed_out.header("retry-after"), Some("1"));
        assert_status(&running.join().expect("the running request"), 504, "the sleeping guest");
    });
    // Nothing was lost: the tenant's next request runs.
    assert_status(&served.post("/t/alpha/echo", Some(ALPHA_KEY), b""), 200, "after the queue drained");
}

#[test]
fn metrics_count_what_was_served() {
    let config = format!(
        "{}{}",
        model_tables(&[IMAGE_MODEL]),
        tenant("alpha", ALPHA_KEY, &[IMAGE_MODEL], &example_module("image-classify", "image-classify", &[IMAGE_MODEL]))
    );
    let served = ServedNode::with_config(&config);
    let before = served.metrics();
    let classify = [("tenant", "alpha"), ("module", "image-classify")];
    assert_eq!(before.value("mantle_requests_total", &[("tenant", "alpha")]), 0.0);

    let photo = sample("chelsea.png");
    for _ in 0..3 {
        assert_status(&served.post("/t/alpha/image-classify", Some(ALPHA_KEY), &photo), 200, "classify");
    }
    assert_status(&served.post("/t/alpha/image-classify", Some(ALPHA_KEY), b"not an image"), 415, "garbage");
    assert_status(&served.post("/t/alpha/image-classify", None, &photo), 401, "no key");
    let tensor = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": vec![0.0f32; 3 * 224 * 224]}]
    });
    let tensor = serde_json::to_vec(&tensor).expect("JSON");
    let kserve = served.post(&format!("/v2/models/{IMAGE_MODEL}/infer"), Some(ALPHA_KEY), &tensor);
    assert_status(&kserve, 200, "KServe infer");

    let after = served.metrics();
    let ok = [classify[0], classify[1], ("status", "200")];
    assert_eq!(after.value("mantle_requests_total", &ok), 3.0);
    assert_eq!(after.value("mantle_requests_total", &[classify[0], classify[1], ("status", "415")]), 1.0);
    assert_eq!(after.value("mantle_requests_total", &[("tenant", ""), ("status", "401")]), 1.0);
    let v2 = [("tenant", "alpha"), ("module", "v2:efficientnet-lite0"), ("status", "200")];
    assert_eq!(after.value("mantle_requests_total", &v2), 1.0);
    // Request and guest time: one observation per request, each in a bucket.
    assert_eq!(after.value("mantle_request_duration_seconds_count", &classify), 4.0);
    assert_eq!(after.value("mantle_request_duration_seconds_bucket", &[classify[0], classify[1], ("le", "+Inf")]), 4.0);
    assert!(after.value("mantle_request_duration_seconds_sum", &classify) > 0.0);
    assert_eq!(after.value("mantle_guest_duration_seconds_count", &classify), 4.0);
    // The model ran once per photo and once for the KServe request; not for the garbage.
    let model = [("tenant", "alpha"), ("model", IMAGE_MODEL)];
    assert_eq!(after.value("mantle_inference_duration_seconds_count", &model), 4.0);
    assert!(after.value("mantle_inference_duration_seconds_sum", &model) > 0.0);
    let received = 3 * photo.len() + b"not an image".len() + tensor.len();
    assert_eq!(after.value("mantle_received_bytes_total", &[("tenant", "alpha")]), received as f64);
    assert!(after.value("mantle_sent_bytes_total", &[("tenant", "alpha")]) >= kserve.body.len() as f64);
    assert_eq!(after.value("mantle_running_requests", &[("tenant", "alpha")]), 0.0);
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let modules = [program_module("echo", programs::ECHO, 30_000)].concat();
    let config = format!("[node]\nshutdown_grace_ms = 30000\n\n{}", tenant("alpha", ALPHA_KEY, &[], &modules));
    let mut served = ServedNode::with_config(&config);
    let replies = std::thread::scope(|scope| {
        let slow: Vec<_> = (0..3)
            .map(|i| {
                let served = &served;
                scope.spawn(move || served.post(&format!("/t/alpha/echo?delay_ms=1500&n={i}"), Some(ALPHA_KEY), b"x"))
            })
            .collect();
        served.wait_for_metrics(Duration::from_secs(30), |m| {
            m.value("mantle_running_requests", &[("tenant", "alpha")]) == 3.0
        });
        served.terminate();
        slow.into_iter().map(|h| h.join().expect("a slow request")).collect::<Vec<_>>()
    });
    for (i, reply) in replies.iter().enumerate() {
        assert_status(reply, 200, "a request in flight at SIGTERM");
        assert_eq!(reply.json()["query"], format!("delay_ms=1500&n={i}"));
    }
    assert_eq!(served.wait_exit(Duration::from_secs(30)), Some(0), "stderr: {}", served.stderr());
}

/// What a client saw at one moment of a node's shutdown.
#[derive(Debug)]
struct Seen {
    after: Duration,
    /// `/readyz`'s status, or `None` when the connection was refused.
    readyz: Option<u16>,
    /// A guest request's status and its `Connection` header.
    request: Option<(u16, Option<String>)>,
}

#[test]
fn sigterm_turns_readyz_503_while_the_node_serves_on_for_the_drain() {
    let modules = [program_module("echo", programs::ECHO, 30_000)].concat();
    let config = format!("[node]\ndrain_ms = 1500\n\n{}", tenant("alpha", ALPHA_KEY, &[], &modules));
    let mut served = ServedNode::with_config(&config);
    assert_eq!(served.get("/readyz", None).status, 200);
    served.terminate();
    let signalled = Instant::now();
    let mut seen = Vec::new();
    loop {
        let readyz = served.try_send("GET", "/readyz", None, b"").ok().map(|r| r.status);
        let request = served
            .try_send("POST", "/t/alpha/echo", Some(ALPHA_KEY), b"still here")
            .ok()
            .map(|r| (r.status, r.header("connection").map(str::to_owned)));
        let stopped = readyz.is_none() && request.is_none();
        seen.push(Seen { after: signalled.elapsed(), readyz, request });
        if stopped {
            break;
        }
        assert!(signalled.elapsed() < Duration::from_secs(30), "the node never stopped listening: {seen:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
    let first_503 = seen.iter().position(|s| s.readyz == Some(503)).expect("/readyz answered 503 at some point");
    let first_refused = seen.iter().position(|s| s.readyz.is_none() || s.request.is_none()).expect("refused");
    assert!(
        seen[..first_503].iter().all(|s| s.after < Duration::from_millis(500)),
        "/readyz went on answering 200 long after SIGTERM: {seen:?}"
    );
    assert!(first_503 < first_refused, "connections were refused before /readyz said 503: {seen:?}");
    // Between the two, guest requests were answered, each on a
    // connection the node closes after it.
    let drained = &seen[first_503..first_refused];
    assert!(drained.len() >= 3, "too few requests answered during the drain: {seen:?}");
    for s in drained {
        assert_eq!(s.readyz, Some(503), "{seen:?}");
        assert_eq!(s.request, Some((200, Some("close".to_owned()))), "{seen:?}");
    }
    // The drain lasts `drain_ms`, however busy the machine.
    assert!(seen[first_refused].after >= Duration::from_millis(1500), "the drain was cut short: {seen:?}");
    assert_eq!(served.wait_exit(Duration::from_secs(30)), Some(0), "stderr: {}", served.stderr());
}

#[test]
fn tritonclient_gets_the_logits_tract_gives() {
    let python = python();
    let config = format!("{}{}", model_tables(&[IMAGE_MODEL]), tenant("alpha", ALPHA_KEY, &[IMAGE_MODEL], ""));
    let served = ServedNode::with_config(&config);
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = repo_root().join("tests/python/kserve_client.py");
    let photo = repo_root().join("models/samples/chelsea.png");
    let mut client = std::process::Command::new(python);
    client.arg(&script).arg(served.host_port()).arg(ALPHA_KEY).arg(&photo).arg(dir.path());
    let output = client.output().expect("the Python client runs");
    assert!(
        output.status.success(),
        "kserve_client.py: {}\nnode: {}",
        String::from_utf8_lossy(&output.stderr),
        served.stderr()
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the client printed JSON");

    assert_eq!(answer["server_live"], true);
    assert_eq!(answer["server_ready"], true);
    assert_eq!(answer["model_ready"], true);
    let metadata = &answer["metadata"];
    assert_eq!(metadata["name"], IMAGE_MODEL);
    assert_eq!(metadata["inputs"][0]["name"], "input");
    assert_eq!(metadata["inputs"][0]["datatype"], "FP32");
    assert_eq!(metadata["inputs"][0]["shape"], serde_json::json!([1, 3, 224, 224]));
    assert_eq!(metadata["outputs"][0]["name"], "logits");

    // The same tensor, run in this process by tract.
    let input = std::fs::read(dir.path().join("input.f32")).expect("the client wrote its input");
    let model = node().model(IMAGE_MODEL);
    let tensor = mantle::models::HostTensor {
        element_type: mantle::models::ElementType::F32,
        shape: vec![1, 3, 224, 224],
        data: input,
    };
    let outputs = model.run(vec![("input".to_owned(), tensor)]).expect("tract runs the model");
    let expected: Vec<f32> =
        outputs[0].1.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(expected.len(), 1000);

    for form in ["binary", "json"] {
        let result = &answer[form];
        assert_eq!(result["shape"], serde_json::json!([1, 1000]), "{form}");
        let logits: Vec<f64> = result["logits"].as_array().expect("logits").iter().filter_map(|v| v.as_f64()).collect();
        assert_eq!(logits.len(), 1000, "{form}");
        let worst = logits.iter().zip(&expected).map(|(a, b)| (a - f64::from(*b)).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{form} tensors: logits differ from tract's by up to {worst}");
        let top = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        assert_eq!(top, Some(282), "{form}: the photo is a tiger cat (ImageNet class 282)");
    }
    let binary_params = &answer["binary"]["response"]["outputs"][0]["parameters"];
    assert_eq!(binary_params["binary_data_size"], 4000, "binary tensors came back as binary");
    assert!(answer["json"]["response"]["outputs"][0]["data"].is_array(), "JSON tensors came back as JSON");
}

#[test]
fn the_readme_configuration_is_valid() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("the README");
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README shows a configuration");
    let text = block.replace("<from `mantle key`>", &key_sha256("mk_example"));
    let config =
        mantle::manifest::node::NodeConfig::parse(&text, repo_root()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.tenants().len(), 1);
    assert_eq!(config.models().len(), 1);
}

#[test]
fn a_mistaken_configuration_is_refused_with_where_the_mistake_is() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, format!("{}\n[[tenant]]\nid = \"alpha\"\nkeys = []\n", model_tables(&[IMAGE_MODEL])))
        .expect("write the configuration");
    let args = [
        OsStr::new("serve"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--config"),
        path.as_os_str(),
    ];
    let refused = run_mantle(&args, b"", Duration::from_secs(60));
    assert_eq!(refused.code, Some(3), "stderr: {}", refused.stderr);
    for expected in ["node.toml", "line 9", "unknown field `keys`"] {
        assert!(refused.stderr.contains(expected), "the error names {expected}: {}", refused.stderr);
    }
}

#[test]
fn a_key_made_by_mantle_key_opens_its_tenant() {
    let made = run_mantle(&[OsStr::new("key")], b"", Duration::from_secs(60));
    assert_eq!(made.code, Some(0), "stderr: {}", made.stderr);
    let printed = String::from_utf8_lossy(&made.stdout).into_owned();
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
            .unwrap_or_else(|| panic!("`mantle key` prints {name}: {printed}"))
    };
    let key = field("key:");
    let hash_line = format!("key_sha256 = [{}]", field("key_sha256:"));
    assert!(key.starts_with("mk_") && key.len() == 67, "{key}");

    // The hash of a key given on stdin is the same.
    let again = run_mantle(&[OsStr::new("key"), OsStr::new("--stdin")], key.as_bytes(), Duration::from_secs(60));
    assert_eq!(again.code, Some(0), "stderr: {}", again.stderr);
    assert!(String::from_utf8_lossy(&again.stdout).contains(&field("key_sha256:")));

    // The printed line goes into a configuration as it is.
    let config = format!("[[tenant]]\nid = \"alpha\"\n{hash_line}\n{}", program_module("echo", programs::ECHO, 10_000));
    let served = ServedNode::with_config(&config);
    let reply = served.post("/t/alpha/echo", Some(&key), b"");
    assert_status(&reply, 200, "the new key");
    assert_eq!(reply.json()["tenant"], "alpha");
    assert_status(&served.post("/t/alpha/echo", Some(&key[..key.len() - 1]), b""), 401, "a key one character short");
}

#[test]
fn a_crashing_guest_gets_500_with_an_error_id_and_the_details_stay_in_the_log() {
    let bomb = format!(
        "[[tenant.module]]\nid = \"bomb\"\npath = '{}'\nlimits = {{ memory_mib = 32 }}\n\n",
        programs::MEMORY_BOMB
    );
    let config = tenant("alpha", ALPHA_KEY, &[], &[bomb, program_module("echo", programs::ECHO, 10_000)].concat());
    let served = ServedNode::with_config(&config);
    let reply = served.post("/t/alpha/bomb", Some(ALPHA_KEY), b"");
    assert_status(&reply, 500, "a guest out of memory");
    let answer = reply.json();
    let id = answer["error_id"].as_str().expect("an error id");
    assert_eq!(reply.header("x-request-id"), Some(id), "the error id is the request id");
    assert!(!reply.text().contains("limit of"), "the sizes stay in the log: {}", reply.text());
    served.wait_for_stderr(&format!("error_id={id}"), Duration::from_secs(10));
    let logged = served.stderr();
    let line = logged.lines().find(|l| l.contains(&format!("error_id={id}"))).expect("the log line");
    assert!(line.contains("memory"), "the log says what happened: {line}");
    // The tenant's other module still answers.
    assert_status(&served.post("/t/alpha/echo", Some(ALPHA_KEY), b""), 200, "after the crash");
}

#[test]
fn a_node_killed_with_requests_in_flight_restarts_and_serves() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let data = tempfile::tempdir().expect("a temp dir");
    let modules = [
        example_module("classify", "image-classify", &[IMAGE_MODEL]),
        program_module("loop", programs::LOOP_FOREVER, 60_000),
    ];
    let config =
        format!("{}{}", model_tables(&[IMAGE_MODEL]), tenant("alpha", ALPHA_KEY, &[IMAGE_MODEL], &modules.concat()));
    let mut node = ServedNode::with_config_in(&config, data.path());
    let photo = sample("chelsea.png");
    let answered = AtomicUsize::new(0);
    let (classify_url, loop_url) = (node.url("/t/alpha/classify"), node.url("/t/alpha/loop"));
    let bearer = format!("Bearer {ALPHA_KEY}");
    std::thread::scope(|scope| {
        // Clients that classify the photo one request after another until
        // the node is gone, and one request that loops until its deadline.
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let agent = agent_trusting(None);
                    loop {
                        match agent.post(&classify_url).header("authorization", &bearer).send(&photo[..]) {
                            Ok(response) => {
                                assert_eq!(response.status(), 200, "before the kill");
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => return e.to_string(),
                        }
                    }
                })
            })
            .collect();
        let looping =
            scope.spawn(|| agent_trusting(None).post(&loop_url).header("authorization", &bearer).send(&b""[..]));
        let started = Instant::now();
        while answered.load(Ordering::Relaxed) < 8 {
            assert!(started.elapsed() < Duration::from_secs(120), "the node answered too few: {}", node.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
        node.kill();
        // Every client learns at once that the node is gone: no hang.
        for client in clients {
            client.join().expect("a client thread");
        }
        let cut = looping.join().expect("the looping client");
        assert!(cut.is_err(), "the looping request was answered: {:?}", cut.map(|r| r.status()));
    });

    // The same data directory: the store opens, and the node serves as before.
    let node = ServedNode::with_config_in(&config, data.path());
    let reply = node.post("/t/alpha/classify", Some(ALPHA_KEY), &photo);
    assert_status(&reply, 200, "after the restart");
    assert_eq!(reply.json()["top"][0]["label"], "tiger cat");
}

/// The kernel level this CPU's flags call for, read from `/proc/cpuinfo`
/// rather than from the node's own detection.
fn level_for_this_cpu() -> &'static str {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|line| line.starts_with("flags"))
        .map(|line| line.split_whitespace().collect())
        .unwrap_or_default();
    let has = |flag| flags.contains(&flag);
    match (has("avx512f"), has("avx2") && has("fma")) {
        (true, true) => "avx512",
        (_, true) => "avx2",
        _ => "portable",
    }
}

/// The top five labels and their scores for the photo, from a node.
fn classified(node: &ServedNode) -> Vec<(String, f64)> {
    let reply = node.post("/t/demo/image-classify", None, &sample("chelsea.png"));
    assert_status(&reply, 200, "image-classify");
    let answer = reply.json();
    answer["top"]
        .as_array()
        .expect("a `top` list")
        .iter()
        .map(|c| (c["label"].as_str().expect("a label").to_owned(), c["score"].as_f64().expect("a score")))
        .collect()
}

#[test]
fn the_node_names_its_kernel_level_and_answers_alike_at_every_level() {
    let level = level_for_this_cpu();
    // One store for the three nodes in turn, so that only the first
    // compiles the guests.
    let data = tempfile::tempdir().expect("a temp dir");
    let start = |env: &[(&str, &str)]| ServedNode::demo_in_with_env(data.path(), env);
    let mut node = start(&[]);
    node.wait_for_stderr("inference kernels: ", Duration::from_secs(10));
    let log = node.stderr();
    let line = log.lines().find(|l| l.contains("inference kernels: ")).expect("the kernel line");
    assert!(line.contains(&format!("inference kernels: {level}; CPU: ")), "{line}");
    let reference = classified(&node);
    assert_eq!(reference[0].0, "tiger cat", "{reference:?}");
    node.terminate();
    node.wait_exit(Duration::from_secs(30));

    // Lowered to the plainest level, the node says so and gives the same
    // labels, and the same scores to rounding.
    let mut portable = start(&[("MANTLE_CPU_KERNELS", "portable")]);
    portable.wait_for_stderr("inference kernels: ", Duration::from_secs(10));
    let log = portable.stderr();
    let line = log.lines().find(|l| l.contains("inference kernels: ")).expect("the kernel line");
    if level != "portable" {
        assert!(line.contains(&format!("portable, lowered from {level}")), "{line}");
    }
    let answer = classified(&portable);
    for ((label, score), (want_label, want_score)) in answer.iter().zip(&reference) {
        assert_eq!(label, want_label, "{answer:?} against {reference:?}");
        assert!((score - want_score).abs() <= 1e-4, "{answer:?} against {reference:?}");
    }
    portable.terminate();
    portable.wait_exit(Duration::from_secs(30));

    // A level the CPU lacks, or a name that is no level, is refused with a
    // warning, and the node runs at the CPU's own.
    let asked = if level == "avx512" { "sse9" } else { "avx512" };
    let node = start(&[("MANTLE_CPU_KERNELS", asked)]);
    node.wait_for_stderr("inference kernels: ", Duration::from_secs(10));
    let log = node.stderr();
    assert!(log.contains(&format!("MANTLE_CPU_KERNELS={asked}")), "{log}");
    assert!(log.contains(&format!("inference kernels: {level}; CPU: ")), "{log}");
}

/// EfficientNet-Lite0 over KServe, on a node at every kernel level this CPU
/// has, against onnxruntime's probabilities for the same tensor
/// (`tests/data/make_efficientnet_reference.py`). The `kernels` test
/// reports the levels this CPU lacks.
#[test]
fn efficientnet_matches_onnxruntime_at_every_kernel_level() {
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/data/efficientnet_reference.json")).expect("the reference is committed"),
    )
    .expect("JSON");
    let want: Vec<f64> =
        reference["probabilities"].as_array().expect("probabilities").iter().filter_map(|p| p.as_f64()).collect();
    assert_eq!(want.len(), 1000);
    let image: Vec<f32> = (0..3 * 224 * 224).map(|i: usize| ((i * 7919 % 255) as f32 - 127.0) / 128.0).collect();
    let body = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": image }]
    });
    let body = serde_json::to_vec(&body).expect("a JSON body");
    let levels = ["portable", "avx2", "avx512"];
    let here = levels.iter().position(|&l| l == level_for_this_cpu()).expect("a known level");
    let data = tempfile::tempdir().expect("a temp dir");
    for level in &levels[..=here] {
        let mut node = ServedNode::demo_in_with_env(data.path(), &[("MANTLE_CPU_KERNELS", level)]);
        let reply = node.post(&format!("/v2/models/{IMAGE_MODEL}/infer"), None, &body);
        assert_status(&reply, 200, "KServe infer");
        let logits: Vec<f64> = reply.json()["outputs"][0]["data"]
            .as_array()
            .expect("the logits")
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
        assert_eq!(logits.len(), 1000, "{level}");
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logits.iter().map(|l| (l - top).exp()).sum();
        let worst = logits.iter().zip(&want).map(|(l, p)| ((l - top).exp() / total - p).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{level}: probabilities differ from onnxruntime's by up to {worst}");
        let logit_gap = logits
            .iter()
            .zip(reference["logits"].as_array().expect("logits"))
            .map(|(a, b)| (a - b.as_f64().unwrap_or(f64::NAN)).abs())
            .fold(0.0, f64::max);
        eprintln!("{level}: probabilities within {worst:.1e} of onnxruntime's, logits within {logit_gap:.1e}");
        node.terminate();
        node.wait_exit(Duration::from_secs(30));
    }
}
