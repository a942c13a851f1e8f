//! The router driven in process, without a socket: what every route
//! answers before any guest or model runs: probes, unknown routes,
//! credentials, oversized headers, and how requests are observed.

use super::{MAX_HEADER_BYTES, REQUEST_ID, Server, router};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use mantle_manifest::node::NodeConfig;
use mantle_node::{BuildOptions, Node};
use mantle_types::Sha256;
use std::path::Path;
use tower::ServiceExt;

const OPERATOR_TOKEN: &str = "operator-token-for-the-router";
const TENANT_KEY: &str = "mk_router_tenant_key";

/// A node with an operator token and one tenant that has no modules, and
/// the store it keeps in `data`.
fn app(data: &Path) -> axum::Router {
    let config = format!(
        "[node]\nadmin_token_sha256 = \"{}\"\n\n[[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n",
        Sha256::of(OPERATOR_TOKEN.as_bytes()),
        Sha256::of(TENANT_KEY.as_bytes())
    );
    let config = NodeConfig::parse(&config, data).expect("a valid configuration");
    let options = BuildOptions { data_dir: Some(data), compile_with: None, builtin_guests: &[] };
    let node = Node::build(&config, &options).expect("the node builds");
    router(Server::new(std::sync::Arc::new(node)))
}

async fn send(app: &axum::Router, request: Request<Body>) -> (Response, String) {
    let response = app.clone().oneshot(request).await.expect("the router always answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("the body reads").to_bytes();
    (Response::from_parts(parts, Body::empty()), String::from_utf8_lossy(&bytes).into_owned())
}

fn get(path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    request.body(Body::empty()).expect("a valid request")
}

fn error_of(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    json["error"].as_str().unwrap_or_else(|| panic!("no error in {body}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_every_refusal_is_json_with_a_request_id() {
    let data = tempfile::tempdir().expect("a temp dir");
    let app = app(data.path());
    let (health, body) = send(&app, get("/healthz", None)).await;
    assert_eq!((health.status(), body.as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(send(&app, get("/readyz", None)).await.0.status(), StatusCode::OK);

    let (missing, body) = send(&app, get("/no/such/route", None)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such endpoint");
    let id = missing.headers().get(&REQUEST_ID).expect("a request id").to_str().expect("text");
    assert_eq!(id.len(), 32, "a fresh id: {id}");

    let named = Request::get("/no/such/route").header(&REQUEST_ID, "client-7").body(Body::empty());
    let (named, _) = send(&app, named.expect("a valid request")).await;
    assert_eq!(named.headers().get(&REQUEST_ID).map(|v| v.as_bytes()), Some(&b"client-7"[..]));

    let (wrong_method, body) =
        send(&app, Request::delete("/healthz").body(Body::empty()).expect("a valid request")).await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(error_of(&body).contains("does not take DELETE"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_the_operator_present_a_bearer_credential_read_the_same_way() {
    let data = tempfile::tempdir().expect("a temp dir");
    let app = app(data.path());
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (listed, body) =
            send(&app, get("/admin/v1/deployments", Some(&format!("{scheme} {OPERATOR_TOKEN}")))).await;
        assert_eq!(listed.status(), StatusCode::OK, "{scheme}: {body}");
        // A tenant's key reaches its routes: here a module it lacks.
        let (call, body) = send(&app, get("/t/acme/absent", Some(&format!("{scheme} {TENANT_KEY}")))).await;
        assert_eq!(call.status(), StatusCode::NOT_FOUND, "{scheme}: {body}");
        assert!(error_of(&body).contains("has no module `absent`"), "{body}");
    }
    for (authorization, path) in [
        (None, "/admin/v1/deployments"),
        (Some(format!("Basic {OPERATOR_TOKEN}")), "/admin/v1/deployments"),
        (Some("Bearer ".to_owned()), "/admin/v1/deployments"),
        (Some(format!("Bearer {TENANT_KEY}")), "/admin/v1/deployments"),
        (None, "/t/acme/absent"),
        (Some(format!("Basic {TENANT_KEY}")), "/t/acme/absent"),
        (Some(format!("Bearer {OPERATOR_TOKEN}")), "/t/acme/absent"),
    ] {
        let (refused, body) = send(&app, get(path, authorization.as_deref())).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{authorization:?} on {path}: {body}");
        assert_eq!(refused.headers().get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    }
    let (other, _) = send(&app, get("/t/globex/anything", Some(&format!("Bearer {TENANT_KEY}")))).await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_past_the_limit_are_refused_before_any_handler() {
    let data = tempfile::tempdir().expect("a temp dir");
    let app = app(data.path());
    let big = "x".repeat(MAX_HEADER_BYTES);
    let request = Request::get("/t/acme/absent").header("x-padding", big).body(Body::empty());
    let (refused, body) = send(&app, request.expect("a valid request")).await;
    assert_eq!(refused.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(error_of(&body).contains(&format!("reads at most {MAX_HEADER_BYTES}")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_are_counted_by_operation_and_status() {
    let data = tempfile::tempdir().expect("a temp dir");
    let app = app(data.path());
    let operator = format!("Bearer {OPERATOR_TOKEN}");
    send(&app, get("/admin/v1/deployments", Some(&operator))).await;
    send(&app, get("/admin/v1/deployments", Some(&operator))).await;
    send(&app, get("/admin/v1/tenants", Some("Bearer wrong"))).await;
    let (_, text) = send(&app, get("/metrics", None)).await;
    for line in [
        r#"mantle_admin_requests_total{operation="GET /admin/v1/deployments",status="200"} 2"#,
        r#"mantle_admin_requests_total{operation="GET /admin/v1/tenants",status="401"} 1"#,
        r#"mantle_admin_request_duration_seconds_count{operation="GET /admin/v1/deployments"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_answers_for_the_key_presented_and_refuses_a_wrong_one() {
    let data = tempfile::tempdir().expect("a temp dir");
    let app = app(data.path());
    let (listed, body) = send(&app, get("/t", Some(&format!("Bearer {TENANT_KEY}")))).await;
    assert_eq!(listed.status(), StatusCode::OK, "{body}");
    let catalog: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(catalog["tenant"], "acme");
    assert_eq!(catalog["open"], false);
    assert_eq!(catalog["modules"], serde_json::json!([]), "nothing configured or deployed");

    let (wrong, body) = send(&app, get("/t", Some("Bearer not-a-key"))).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&body), "the API key is not valid");
    let (none, body) = send(&app, get("/t", None)).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(error_of(&body).contains("needs an API key"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_come_with_a_policy_that_keeps_them_on_the_node() {
    let data = tempfile::tempdir().expect("a temp dir");
    let app = app(data.path());
    for (path, kind) in [("/", "text/html"), ("/console", "text/html"), ("/ui/try.js", "text/javascript")] {
        let (page, body) = send(&app, get(path, None)).await;
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        let header = |name| page.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(header(header::CONTENT_TYPE).starts_with(kind), "{path}: {}", header(header::CONTENT_TYPE));
        let policy = header(header::CONTENT_SECURITY_POLICY);
        for directive in ["default-src 'none'", "connect-src 'self'", "script-src 'self'", "frame-ancestors 'none'"] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert_eq!(header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(!body.is_empty());

        // The browser's copy is current: 304, no body.
        let etag = header(header::ETAG);
        let again = Request::get(path).header(header::IF_NONE_MATCH, &etag).body(Body::empty());
        let (cached, body) = send(&app, again.expect("a valid request")).await;
        assert_eq!((cached.status(), body.as_str()), (StatusCode::NOT_MODIFIED, ""), "{path}");
    }
    let (missing, _) = send(&app, get("/ui/nothing.js", None)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
