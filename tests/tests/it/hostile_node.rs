//! Guests that attack a whole node: its log and an operator's terminal,
//! the answers it sends, its instance slots, its inference threads and
//! its compiler. Each attack runs while a neighbour tenant is served, and
//! the neighbour's answer is checked.

use mantle::runtime::{MAX_RESPONSE_HEADER_BYTES, REQUEST_OUTPUT_BYTES, TENANT_OUTPUT_BURST_BYTES};
use mantle::runtime::{ShapeLimits, TENANT_OUTPUT_BYTES_PER_SECOND};
use mantle_tests::crafted::{self, Crafted};
use mantle_tests::served::{ServedNode, bundle_of, example_module, key_sha256, model_tables, program_module, tenant};
use mantle_tests::{programs, run_mantle, sample};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ALPHA: &str = "mk_alpha_0123456789abcdef";
const BETA: &str = "mk_beta_fedcba9876543210";

/// What the hostile guest's `forge` writes: the text of one of the node's
/// own log lines after a line break, and terminal escapes.
const FORGED_LINE: &str = "2026-12-01T00:00:00.000000Z  INFO mantle: all is well";

/// Tenant `alpha` running the hostile guest and tenant `beta` running echo.
fn hostile_and_neighbour(alpha_extra: &str) -> String {
    [
        tenant("alpha", ALPHA, &[], &format!("{alpha_extra}{}", program_module("hostile", programs::HOSTILE, 30_000))),
        tenant("beta", BETA, &[], &program_module("echo", programs::ECHO, 30_000)),
    ]
    .concat()
}

fn neighbour_is_served(served: &ServedNode) {
    let reply = served.post("/t/beta/echo", Some(BETA), b"still here");
    assert_eq!(reply.status, 200, "the neighbour: {}", reply.text());
    assert_eq!(reply.json()["tenant"], "beta");
}

#[test]
fn stdout_stderr_and_the_log_share_one_budget_and_what_is_dropped_is_counted() {
    let served = ServedNode::with_config(&hostile_and_neighbour(""));
    let before = served.stderr().len();
    std::thread::scope(|scope| {
        // 8 MiB to each of stdout and stderr, and 8 MiB through context.log.
        let streams = scope.spawn(|| served.post("/t/alpha/hostile?flood=8", Some(ALPHA), b""));
        let log = scope.spawn(|| served.post("/t/alpha/hostile?logflood=8", Some(ALPHA), b""));
        neighbour_is_served(&served);
        for flood in [streams, log] {
            let reply = flood.join().expect("a flood's client");
            assert_eq!((reply.status, reply.text()), (200, "done".to_owned()), "the guest finishes");
        }
    });
    let metrics = served.metrics();
    let logged = metrics.value("mantle_guest_output_logged_bytes_total", &[("tenant", "alpha")]);
    let dropped = metrics.value("mantle_guest_output_dropped_bytes_total", &[("tenant", "alpha")]);
    assert!(logged <= (2 * REQUEST_OUTPUT_BYTES) as f64, "logged {logged} bytes for two requests");
    // 8 MiB to each stream in lines of 1 KiB; 8 MiB to the log in lines of 4,000 bytes.
    let written = 2 * (8 << 20) + (8 << 20) / 4000 * 4000;
    assert_eq!(logged + dropped, written as f64, "every byte is logged or counted as dropped");
    let grown = served.stderr().len() - before;
    assert!(grown < 1 << 20, "the node wrote {grown} bytes to its log for 24 MiB of guest output");
}

#[test]
fn a_tenant_logging_on_every_request_is_held_to_its_rate() {
    let config = [
        tenant("alpha", ALPHA, &[], &program_module("hostile", programs::HOSTILE, 30_000)),
        tenant("beta", BETA, &[], &program_module("hostile", programs::HOSTILE, 30_000)),
    ]
    .concat();
    let served = ServedNode::with_config(&config);
    let started = Instant::now();
    // Each asks for 60 KiB, within one request's budget; together they ask
    // for far more than the tenant's burst.
    let requests = 16;
    for _ in 0..requests {
        let reply = served.post("/t/alpha/hostile?log=60", Some(ALPHA), b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let elapsed = started.elapsed().as_secs_f64() + 1.0;
    let allowed = TENANT_OUTPUT_BURST_BYTES as f64 + TENANT_OUTPUT_BYTES_PER_SECOND as f64 * elapsed;
    let metrics = served.metrics();
    let logged = metrics.value("mantle_guest_output_logged_bytes_total", &[("tenant", "alpha")]);
    let dropped = metrics.value("mantle_guest_output_dropped_bytes_total", &[("tenant", "alpha")]);
    assert!(logged <= allowed, "logged {logged} bytes in {elapsed:.1} s; the rate allows {allowed}");
    assert_eq!(logged + dropped, (requests * 60 * 1023) as f64, "every byte is logged or counted");
    // Another tenant's allowance is its own.
    let reply = served.post("/t/beta/hostile?log=60", Some(BETA), b"");
    assert_eq!(reply.status, 200);
    let metrics = served.metrics();
    assert_eq!(metrics.value("mantle_guest_output_logged_bytes_total", &[("tenant", "beta")]), (60 * 1023) as f64);
    assert_eq!(metrics.value("mantle_guest_output_dropped_bytes_total", &[("tenant", "beta")]), 0.0);
}

/// Every line of `log` that the guest could have forged.
fn forged_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.starts_with(FORGED_LINE) || line.contains('\u{1b}')).collect()
}

/// Writes into `dir` a component whose handler traps in a function named
/// with a line break, a forged log line and a terminal escape.
fn write_named_trap(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("named-trap.wasm");
    let name = format!("evil\\n{FORGED_LINE} \\1b[2K");
    let crafted = Crafted::new().main(&format!("(func $t (@name \"{name}\") unreachable)")).calling("$t");
    std::fs::write(&path, crafted.build()).expect("write the component");
    path
}

#[test]
fn what_a_guest_writes_or_names_reaches_the_log_escaped() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let named_trap = write_named_trap(dir.path());
    let trap_module = format!("[[tenant.module]]\nid = \"named-trap\"\npath = '{}'\n\n", named_trap.display());
    let served = ServedNode::with_config(&hostile_and_neighbour(&trap_module));

    let reply = served.post("/t/alpha/hostile?forge", Some(ALPHA), b"");
    assert_eq!(reply.status, 500, "{}", reply.text());
    // The client gets the guest's message as the guest wrote it, in JSON.
    assert!(reply.error().starts_with(&format!("boom\n{FORGED_LINE}")), "{}", reply.text());
    let reply = served.post("/t/alpha/named-trap", Some(ALPHA), b"");
    assert_eq!(reply.status, 500, "{}", reply.text());
    let id = reply.json()["error_id"].as_str().expect("an error id").to_owned();
    neighbour_is_served(&served);

    served.wait_for_stderr(&format!("error_id={id}"), Duration::from_secs(10));
    let log = served.stderr();
    assert_eq!(forged_lines(&log), Vec::<&str>::new(), "forged lines in the node log");
    // Each line the guest writes to stdout or stderr is a log line of its
    // own, tagged as the guest's; context.log writes one line, whatever it
    // holds. Either way, what could move the terminal is escaped.
    let escaped_tail = format!("{FORGED_LINE}\\r\\u{{1b}}[2K\\u{{202e}}");
    assert_eq!(log.matches(&escaped_tail).count(), 3, "the escaped lines: {log}");
    let one_line = format!("boom\\n{escaped_tail}");
    assert_eq!(log.matches(&one_line).count(), 1, "context.log's one line: {log}");
    let trap_line = log.lines().find(|l| l.contains(&format!("error_id={id}"))).expect("the trap's line");
    assert!(trap_line.contains(&format!("evil\\n{FORGED_LINE} \\u{{1b}}[2K")), "{trap_line}");
}

#[test]
fn what_a_guest_writes_or_names_reaches_the_terminal_escaped_offline() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let named_trap = write_named_trap(dir.path());
    let limit = Duration::from_secs(120);
    for args in [
        vec![programs::HOSTILE, "--path", "/forge"],
        vec![programs::HOSTILE, "--path", "/status=418"],
        vec![named_trap.to_str().expect("a UTF-8 path")],
    ] {
        let mut argv: Vec<&std::ffi::OsStr> = vec!["run".as_ref()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        let ran = run_mantle(&argv, b"", limit);
        assert_eq!(ran.code, Some(1), "{args:?}: {}", ran.stderr);
        assert_eq!(forged_lines(&ran.stderr), Vec::<&str>::new(), "{args:?}: forged lines on stderr");
        assert!(ran.stderr.lines().any(|l| l.starts_with("error: ")), "{args:?}: {}", ran.stderr);
    }
}

/// One HTTP/1.1 exchange on a connection that stays open: the status, the
/// headers (names in lower case) and the body, read by its length.
fn exchange(stream: &mut BufReader<std::net::TcpStream>, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {ALPHA}\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).expect("send");
    let mut status_line = String::new();
    stream.read_line(&mut status_line).expect("a status line");
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("name: value");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().expect("a length"));
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the body");
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn an_answer_carries_no_hop_by_hop_headers_a_valid_status_and_a_body_only_where_http_has_one() {
    let served = ServedNode::with_config(&hostile_and_neighbour(""));
    let stream = std::net::TcpStream::connect(served.host_port()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("a timeout");
    let mut stream = BufReader::new(stream);

    let (status, headers, body) = exchange(&mut stream, "/t/alpha/hostile?hop");
    assert_eq!((status, body.as_slice()), (200, &b"body"[..]));
    for hop in [
        "connection",
        "x-named-by-connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(header(&headers, hop), None, "`{hop}` was passed on: {headers:?}");
    }
    assert_eq!(header(&headers, "x-kept"), Some("yes"));
    assert_eq!(header(&headers, "content-length"), Some("4"), "the node's own length, not the guest's");

    // The guest said `connection: close`; the connection is the node's, and
    // it carries every exchange below.
    for bodiless in [204, 304] {
        let (status, headers, body) = exchange(&mut stream, &format!("/t/alpha/hostile?status={bodiless}"));
        assert_eq!(status, bodiless);
        assert!(body.is_empty());
        assert_eq!(header(&headers, "content-length"), None, "{bodiless}: {headers:?}");
        assert_eq!(header(&headers, "transfer-encoding"), None, "{bodiless}: {headers:?}");
        assert_eq!(header(&headers, "x-kept"), Some("yes"));
    }
    let (status, _, body) = exchange(&mut stream, "/t/alpha/hostile?status=599");
    assert_eq!((status, body.as_slice()), (599, &b"body"[..]));
    for invalid in [0, 99, 100, 101, 199, 600, 700, 65535] {
        let (status, _, body) = exchange(&mut stream, &format!("/t/alpha/hostile?status={invalid}"));
        assert_eq!(status, 500, "status {invalid}");
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("invalid status")), "{answer}");
    }

    // Headers count toward what a guest may answer.
    let fits = MAX_RESPONSE_HEADER_BYTES / 1024 - 2;
    let (status, headers, _) = exchange(&mut stream, &format!("/t/alpha/hostile?headers={fits}"));
    assert_eq!(status, 200);
    assert_eq!(headers.iter().filter(|(n, _)| n.starts_with("x-filler-")).count(), fits);
    let (status, _, body) = exchange(&mut stream, "/t/alpha/hostile?headers=2048");
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("larger than the node passes on"));
    neighbour_is_served(&served);
}

#[test]
fn a_tenant_cannot_take_more_than_its_share_of_instance_slots() {
    // Four slots and two tenants: two each, whatever a tenant's own limits.
    let config = format!(
        "[node]\nmax_instances = 4\n\n{}{}",
        tenant(
            "alpha",
            ALPHA,
            &[],
            &format!(
                "limits = {{ max_concurrent = 16, max_queued = 16 }}\n{}",
                program_module("loop", programs::LOOP_FOREVER, 3_000)
            )
        ),
        tenant("beta", BETA, &[], &program_module("echo", programs::ECHO, 30_000)),
    );
    let served = ServedNode::with_config(&config);
    std::thread::scope(|scope| {
        let flood: Vec<_> = (0..6).map(|_| scope.spawn(|| served.post("/t/alpha/loop", Some(ALPHA), b""))).collect();
        served.wait_for_metrics(Duration::from_secs(30), |m| m.value("mantle_live_instances", &[]) == 2.0);
        neighbour_is_served(&served);
        let mut refused = 0;
        let mut statuses = Vec::new();
        for request in flood {
            let reply = request.join().expect("a flood request");
            if reply.status == 503 {
                refused += 1;
                assert_eq!(reply.header("retry-after"), Some("1"));
                assert!(reply.error().contains("all of its 2 guest instances"), "{}", reply.error());
            }
            statuses.push(reply.status);
        }
        statuses.sort_unstable();
        // Two run to their deadline; the rest are refused at once.
        assert_eq!(statuses, [503, 503, 503, 503, 504, 504], "alpha's answers");
        assert_eq!(refused, 4);
    });
}

const OPERATOR: &str = "operator-secret-0123456789";

/// Uploads `bundle` for tenant `alpha` through the admin API.
fn upload(served: &ServedNode, bundle: &[u8]) -> mantle_tests::served::Reply {
    served.send_with(
        "POST",
        "/admin/v1/tenants/alpha/deployments",
        Some(OPERATOR),
        &[("content-type", "application/octet-stream")],
        bundle,
    )
}

#[test]
fn compiling_a_guest_is_bounded_in_time_and_memory_while_the_node_serves() {
    // A node whose compile limits are `timeout_ms` and 256 MiB.
    let node = |timeout_ms: u64| {
        ServedNode::with_config(&format!(
            "[node]\nadmin_token_sha256 = \"{}\"\ncompile_timeout_ms = {timeout_ms}\ncompile_memory_mib = 256\n\n{}",
            key_sha256(OPERATOR),
            hostile_and_neighbour("")
        ))
    };
    let shape = ShapeLimits::default();
    // Within every shape limit, yet seconds of compiling: loops cost
    // Cranelift more than linear time.
    let mut slow = Crafted::new();
    for i in 0..20 {
        slow = slow.main(&crafted::looping_function(&format!("$loops{i}"), shape.max_loops));
    }
    // Within every shape limit, yet hundreds of MiB to compile.
    let mut large = Crafted::new();
    for i in 0..4 {
        large = large.main(&crafted::long_function(&format!("$long{i}"), shape.max_function_bytes - 1000));
    }
    // The slow one compiles for 1.5 s: requests are served meanwhile. The
    // large one is given a minute, so that only its memory can stop it
    // however busy the machine is, and it may be stopped sooner than any
    // request takes.
    let cases = [
        (slow.build(), 1_500, "took longer than the node allows (1.5s)", true),
        (large.build(), 60_000, "needed more memory than the node allows (256 MiB)", false),
    ];
    for (wasm, timeout_ms, limit, slow) in cases {
        let served = node(timeout_ms);
        let served_meanwhile = AtomicUsize::new(0);
        let deploying = AtomicBool::new(true);
        let refused = std::thread::scope(|scope| {
            scope.spawn(|| {
                while deploying.load(Ordering::SeqCst) {
                    neighbour_is_served(&served);
                    served_meanwhile.fetch_add(1, Ordering::SeqCst);
                }
            });
            let refused = upload(&served, &bundle_of("bomb", "bomb", &wasm, ""));
            deploying.store(false, Ordering::SeqCst);
            refused
        });
        assert_eq!(refused.status, 422, "{}", refused.text());
        let message = refused.error();
        assert!(message.contains("too expensive to compile") && message.contains(limit), "{message}");
        if slow {
            assert!(served_meanwhile.load(Ordering::SeqCst) > 0, "nothing was served while it compiled");
        }
        // The same node still compiles what is within its limits.
        let echo = std::fs::read(programs::ECHO).expect("the echo guest");
        let deployed = upload(&served, &bundle_of("fine", "fine", &echo, ""));
        assert_eq!(deployed.status, 200, "{}", deployed.text());
        assert_eq!(served.post("/t/alpha/fine", Some(ALPHA), b"").status, 200);
    }
}

/// Posts `body` to `path` as `key` in a loop until `stop`, and returns each
/// answer's latency.
fn keep_posting(served: &ServedNode, path: &str, key: &str, body: &[u8], stop: &AtomicBool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let reply = served.post(path, Some(key), body);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        latencies.push(started.elapsed());
    }
    latencies
}

fn median(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    latencies[latencies.len() / 2]
}

#[test]
fn a_tenant_queueing_many_inferences_does_not_hold_up_another_tenants_one() {
    let (image, text) = ("efficientnet-lite0", "minilm-l6");
    let config = format!(
        "[node]\ninference_threads = 2\n\n{}{}{}",
        model_tables(&[image, text]),
        tenant("heavy", ALPHA, &[text], &example_module("embed", "text-embed", &[text])),
        tenant("light", BETA, &[image], &example_module("classify", "image-classify", &[image])),
    );
    let served = ServedNode::with_config(&config);
    // 128 tokens, the most text-embed runs: its longest inference.
    let long_text = "edge inference runs models close to the data they see ".repeat(20);
    let photo = sample("chelsea.png");
    let stop = AtomicBool::new(false);
    let (heavy, light) = std::thread::scope(|scope| {
        let heavy: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| keep_posting(&served, "/t/heavy/embed", ALPHA, long_text.as_bytes(), &stop)))
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let light: Vec<Duration> = (0..12)
            .map(|_| {
                let started = Instant::now();
                let reply = served.post("/t/light/classify", Some(BETA), &photo);
                assert_eq!(reply.status, 200, "{}", reply.text());
                assert!(reply.text().contains("tiger cat"), "{}", reply.text());
                started.elapsed()
            })
            .collect();
        stop.store(true, Ordering::SeqCst);
        let heavy: Vec<Duration> = heavy.into_iter().flat_map(|h| h.join().expect("a heavy client")).collect();
        (heavy, light)
    });
    let (heavy, light) = (median(heavy), median(light));
    // Behind all eight of the heavy tenant's inferences, a light request
    // would wait as long as a heavy one; given the next free thread, it
    // waits for one heavy inference at most.
    assert!(
        light.as_secs_f64() < 0.6 * heavy.as_secs_f64(),
        "the light tenant's median {light:?} against the heavy tenant's {heavy:?}"
    );
}
