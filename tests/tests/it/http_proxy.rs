//! Components of the standard `wasi:http/proxy` world, built with the
//! `wasip2` crate's bindings, that also import `wasi:nn`: served on a
//! tenant's route and run offline like a `mantle:edge` guest, with its
//! grants, limits, deadline and metrics, and with outgoing requests
//! refused.

use mantle::runtime::{ModuleLimits, Request};
use mantle_tests::served::{ServedNode, model_tables, tenant};
use mantle_tests::{http_status, misbehaviour_is_stopped, model_grant, node, post, programs, run_mantle};
use std::ffi::OsStr;
use std::time::Duration;

const KEY: &str = "mk_proxy_0123456789abcdef";
const IMAGE_MODEL: &str = "efficientnet-lite0";
const TEXT_MODEL: &str = "minilm-l6";

fn proxy_node() -> ServedNode {
    let module = format!(
        "[[tenant.module]]\nid = \"proxy\"\npath = '{}'\nmodels = [\"{IMAGE_MODEL}\"]\nlimits = {{ deadline_ms = 30000 }}\n\n",
        programs::HTTP_PROXY
    );
    ServedNode::with_config(&format!(
        "{}{}",
        model_tables(&[IMAGE_MODEL, TEXT_MODEL]),
        tenant("alpha", KEY, &[IMAGE_MODEL, TEXT_MODEL], &module)
    ))
}

#[test]
fn a_wasi_http_component_is_served_on_its_route_with_its_grants() {
    let served = proxy_node();

    // The request as the route leaves it: the path after the prefix, the
    // query, the headers and the body.
    let echo =
        served.send_with("POST", "/t/alpha/proxy/echo?x=1&y=two", Some(KEY), &[("x-trace", "abc")], b"hello, proxy");
    assert_eq!(echo.status, 200, "{}", echo.text());
    assert_eq!(echo.header("content-type"), Some("application/json"));
    let echoed = echo.json();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path_with_query"], "/echo?x=1&y=two");
    assert_eq!(echoed["body"], "hello, proxy");
    let headers = echoed["headers"].as_array().expect("headers");
    assert!(headers.iter().any(|h| h[0] == "x-trace" && h[1] == "abc"), "{headers:?}");

    // A granted model runs through wasi:nn; one the module was not
    // granted, though the tenant has it, is refused as `security`.
    let shape = "1,3,224,224";
    let ran =
        served.post(&format!("/t/alpha/proxy/model?name={IMAGE_MODEL}&input=input&shape={shape}"), Some(KEY), b"");
    assert_eq!(ran.status, 200, "{}", ran.text());
    assert_eq!(ran.json()["outputs"]["logits"], serde_json::json!([1, 1000]));
    let refused =
        served.post(&format!("/t/alpha/proxy/model?name={TEXT_MODEL}&input=input_ids&shape=1,4"), Some(KEY), b"");
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["code"], "Security");

    // An outgoing request fails with a clear error, and nothing reaches
    // the address it was sent to.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    listener.set_nonblocking(true).expect("non-blocking");
    let to = listener.local_addr().expect("an address");
    let out = served.post(&format!("/t/alpha/proxy/outgoing?to={to}"), Some(KEY), b"");
    assert_eq!(out.status, 502, "{}", out.text());
    assert_eq!(out.json()["sent"], false);
    assert_eq!(out.json()["error"], "HttpRequestDenied");
    assert!(listener.accept().is_err(), "the component reached {to}");
    served.wait_for_stderr("refused the guest's outgoing HTTP request", Duration::from_secs(10));

    // Counted as any guest's requests are, under its tenant and module.
    let metrics = served.metrics();
    let proxy = [("tenant", "alpha"), ("module", "proxy")];
    assert_eq!(metrics.value("mantle_requests_total", &[proxy[0], proxy[1], ("status", "200")]), 2.0);
    assert_eq!(metrics.value("mantle_requests_total", &[proxy[0], proxy[1], ("status", "403")]), 1.0);
    assert_eq!(metrics.value("mantle_guest_duration_seconds_count", &proxy), 4.0);
    let model = [("tenant", "alpha"), ("model", IMAGE_MODEL)];
    assert_eq!(metrics.value("mantle_inference_duration_seconds_count", &model), 1.0);
}

#[test]
fn mantle_run_runs_a_wasi_http_component_offline() {
    let grant = model_grant(IMAGE_MODEL);
    let query = format!("name={IMAGE_MODEL}&input=input&shape=1,3,224,224");
    let args: [&OsStr; 8] = [
        "run".as_ref(),
        programs::HTTP_PROXY.as_ref(),
        "--model".as_ref(),
        grant.as_ref(),
        "--path".as_ref(),
        "/model".as_ref(),
        "--query".as_ref(),
        query.as_ref(),
    ];
    let ran = run_mantle(&args, b"", Duration::from_secs(120));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let answer: serde_json::Value = serde_json::from_slice(&ran.stdout).expect("JSON");
    assert_eq!(answer["outputs"]["logits"], serde_json::json!([1, 1000]));

    let args: [&OsStr; 4] = ["run".as_ref(), programs::HTTP_PROXY.as_ref(), "--path".as_ref(), "/echo".as_ref()];
    let echoed = run_mantle(&args, b"offline body", Duration::from_secs(120));
    assert_eq!(echoed.code, Some(0), "{}", echoed.stderr);
    let answer: serde_json::Value = serde_json::from_slice(&echoed.stdout).expect("JSON");
    assert_eq!((answer["path_with_query"].as_str(), answer["body"].as_str()), (Some("/echo"), Some("offline body")));
}

#[tokio::test]
async fn a_wasi_http_component_that_misbehaves_is_stopped_and_its_neighbour_served() {
    let limits = ModuleLimits { deadline: Duration::from_secs(3), ..ModuleLimits::default() };
    let proxy = node().program(programs::HTTP_PROXY, "tenant-http", &[], limits);
    misbehaviour_is_stopped(&proxy).await;

    // One that returns without answering gets a clear error, at once.
    let silent = Request { path: "/silent".to_owned(), ..post(Vec::new()) };
    let started = std::time::Instant::now();
    let error = node().call(&proxy, silent).await.expect_err("no response");
    assert!(started.elapsed() < Duration::from_secs(2), "it waited {:?}", started.elapsed());
    assert_eq!(http_status(&error), 500);
    assert!(error.to_string().contains("without setting a response"), "{error}");
}
