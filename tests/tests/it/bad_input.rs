//! Bad input on every HTTP endpoint of a real node: guest routes, KServe V2
//! and the admin API. Each request is written byte for byte to its own
//! connection, and each must get a 4xx whose JSON error names the problem:
//! never a 5xx, a bare status or a hang. The node then serves as before.

use mantle_tests::served::{
    Reply, ServedNode, example_module, key_sha256, model_tables, program_module, read_until_closed, tenant,
};
use mantle_tests::{programs, sample};

const KEY: &str = "mk_alpha_0123456789abcdef";
const OPERATOR: &str = "operator-secret-0123456789";
/// A key nobody holds.
const STRANGER: &str = "mk_stranger_5555555555555555";
const IMAGE_MODEL: &str = "efficientnet-lite0";
const TEXT_MODEL: &str = "minilm-l6";

fn config() -> String {
    let modules = [
        example_module("image-classify", "image-classify", &[IMAGE_MODEL]),
        program_module("echo", programs::ECHO, 30_000),
    ];
    format!(
        "[node]\nadmin_token_sha256 = \"{}\"\n\n{}{}",
        key_sha256(OPERATOR),
        model_tables(&[IMAGE_MODEL, TEXT_MODEL]),
        tenant("alpha", KEY, &[IMAGE_MODEL, TEXT_MODEL], &modules.concat())
    )
}

/// One bad request: what it is, and what the answer must be.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    /// Who sends it: the tenant, the operator or nobody.
    token: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// A phrase the error message must hold.
    names: &'static str,
}

impl Case {
    fn new(
        what: &'static str,
        method: &'static str,
        path: impl Into<String>,
        status: u16,
        names: &'static str,
    ) -> Case {
        Case { what, method, path: path.into(), token: Some(KEY), headers: vec![], body: vec![], status, names }
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = body.into();
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }

    fn token(mut self, token: Option<&'static str>) -> Case {
        self.token = token;
        self
    }

    /// The request as it goes on the wire.
    fn bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", self.method, self.path);
        if let Some(token) = self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// What is wrong with `reply` as the answer to this case, if anything.
    fn mismatch(&self, reply: Option<Reply>) -> Option<String> {
        let what = self.what;
        let Some(reply) = reply else {
            return Some(format!("{what}: the node closed the connection without an answer"));
        };
        let text = reply.text();
        let content_type = reply.header("content-type").unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned));
        match message {
            _ if reply.status != self.status => {
                Some(format!("{what}: status {}, not {}: {text}", reply.status, self.status))
            }
            _ if !content_type.starts_with("application/json") => {
                Some(format!("{what}: content type `{content_type}`: {text}"))
            }
            Some(message) if message.contains(self.names) => None,
            _ => Some(format!("{what}: the error does not name `{}`: {text}", self.names)),
        }
    }
}

fn kserve_cases() -> Vec<Case> {
    let infer = format!("/v2/models/{IMAGE_MODEL}/infer");
    let input = |datatype: &str, shape: &str, data: &str| {
        format!(r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#)
    };
    let binary_header = r#"{"inputs":[{"name":"input","shape":[1,224,224,3],"datatype":"FP32","parameters":{"binary_data_size":602112}}]}"#;
    let mut binary_body = binary_header.as_bytes().to_vec();
    binary_body.extend_from_slice(&[0; 10]);
    vec![
        Case::new("an empty body", "POST", &infer, 400, "not a valid inference request"),
        Case::new("a body that is not JSON, typed as text", "POST", &infer, 400, "not a valid inference request")
            .header("Content-Type", "text/plain")
            .body("classify this please"),
        Case::new("a PNG sent as the body", "POST", &infer, 400, "not a valid inference request")
            .header("Content-Type", "image/png")
            .body(sample("chelsea.png")),
        Case::new("truncated JSON", "POST", &infer, 400, "EOF").body(r#"{"inputs": [{"name": "in"#),
        Case::new("JSON of the wrong form", "POST", &infer, 400, "invalid type").body(r#"{"inputs": 5}"#),
        Case::new("a datatype the protocol lacks", "POST", &infer, 400, "`BYTES` is not supported")
            .body(input("BYTES", "[1]", r#"["a"]"#)),
        Case::new("a datatype the model does not take", "POST", &infer, 400, "must be")
            .body(input("INT64", "[1]", "[0]")),
        Case::new("shape and data that disagree", "POST", &infer, 400, "needs 150528 elements, but 2").body(input(
            "FP32",
            "[1,224,224,3]",
            "[1, 2]",
        )),
        Case::new("a negative dimension", "POST", &infer, 400, "invalid value").body(input("FP32", "[-1]", "[1]")),
        Case::new("dimensions whose product overflows", "POST", &infer, 400, "input `input`").body(input(
            "FP32",
            "[4294967296,4294967296,4294967296]",
            "[1]",
        )),
        Case::new("binary_data_size past the body", "POST", &infer, 400, "binary_data_size is 602112")
            .header("Inference-Header-Content-Length", binary_header.len().to_string())
            .body(binary_body),
        Case::new("a header length that is not a number", "POST", &infer, 400, "is not a byte count")
            .header("Inference-Header-Content-Length", "twelve")
            .body("{}"),
        Case::new("a header length past the body", "POST", &infer, 400, "but the body has only 2 bytes")
            .header("Inference-Header-Content-Length", "4096")
            .body("{}"),
        Case::new("a compressed body", "POST", &infer, 415, "compressed")
            .header("Content-Encoding", "gzip")
            .body(vec![0x1f, 0x8b, 8, 0]),
        Case::new("an unknown model", "POST", "/v2/models/no-such-model/infer", 403, "`no-such-model` is not granted")
            .body(input("FP32", "[1]", "[1]")),
        Case::new("an unknown version", "GET", format!("/v2/models/{IMAGE_MODEL}/versions/9"), 403, "version `9`"),
        Case::new("a model name that is not UTF-8", "POST", "/v2/models/%FF%FE/infer", 400, "path cannot be read"),
        Case::new("the wrong method", "GET", &infer, 405, "does not take GET"),
    ]
}

fn guest_route_cases() -> Vec<Case> {
    vec![
        Case::new("an empty body to image-classify", "POST", "/t/alpha/image-classify", 400, "the body is empty"),
        Case::new("JSON to image-classify", "POST", "/t/alpha/image-classify", 415, "neither a PNG nor a JPEG")
            .header("Content-Type", "application/json")
            .body(r#"{"image": "chelsea.png"}"#),
        Case::new("a module name that is not UTF-8", "POST", "/t/alpha/%C3%28", 400, "path cannot be read"),
        Case::new("a guest path that is not UTF-8", "POST", "/t/alpha/echo/a/%FF", 400, "path cannot be read"),
        Case::new("an unknown module", "POST", "/t/alpha/no-such-module", 404, "no module `no-such-module`"),
        Case::new("no key", "POST", "/t/alpha/echo", 401, "key").token(None),
        Case::new("a key nobody holds", "POST", "/t/alpha/echo", 401, "key").token(Some(STRANGER)),
        Case::new("the operator token as a tenant key", "POST", "/t/alpha/echo", 401, "key").token(Some(OPERATOR)),
        Case::new("the operator token at KServe", "GET", format!("/v2/models/{IMAGE_MODEL}"), 401, "key")
            .token(Some(OPERATOR)),
        Case::new("an oversized header", "POST", "/t/alpha/echo", 431, "the node reads at most")
            .header("X-Padding", "p".repeat(40 << 10)),
    ]
}

fn admin_cases() -> Vec<Case> {
    let deployments = "/admin/v1/tenants/alpha/deployments";
    let activate = "/admin/v1/tenants/alpha/deployments/greeter/activate";
    vec![
        Case::new("an upload with no token", "POST", deployments, 401, "Bearer").token(None),
        Case::new("an upload with a tenant key", "POST", deployments, 401, "operator token is not valid"),
        Case::new("an empty bundle", "POST", deployments, 422, "bundle").token(Some(OPERATOR)),
        Case::new("a bundle that is not an archive", "POST", deployments, 422, "bundle")
            .token(Some(OPERATOR))
            .body(sample("chelsea.png")),
        Case::new(
            "an activate flag that is not a boolean",
            "POST",
            format!("{deployments}?activate=maybe"),
            400,
            "query",
        )
        .token(Some(OPERATOR)),
        Case::new("a tenant name that is not UTF-8", "POST", "/admin/v1/tenants/%FF/deployments", 400, "path")
            .token(Some(OPERATOR)),
        Case::new("an activation without a content type", "POST", activate, 415, "Content-Type")
            .token(Some(OPERATOR))
            .body(r#"{"version": "1"}"#),
        Case::new("an activation that is not JSON", "POST", activate, 400, "not the JSON expected")
            .token(Some(OPERATOR))
            .header("Content-Type", "application/json")
            .body(r#"{"version": "#),
        Case::new("an activation missing its version", "POST", activate, 422, "version")
            .token(Some(OPERATOR))
            .header("Content-Type", "application/json")
            .body("{}"),
        Case::new("activating an unknown deployment", "POST", activate, 404, "greeter")
            .token(Some(OPERATOR))
            .header("Content-Type", "application/json")
            .body(r#"{"version": "1"}"#),
        Case::new(
            "deleting an unknown deployment",
            "DELETE",
            "/admin/v1/tenants/alpha/deployments/greeter",
            404,
            "greeter",
        )
        .token(Some(OPERATOR)),
        Case::new("the wrong method", "PUT", deployments, 405, "does not take PUT").token(Some(OPERATOR)),
        Case::new("an unknown endpoint", "GET", "/admin/v2/everything", 404, "no such endpoint"),
    ]
}

#[test]
fn every_endpoint_answers_bad_input_with_a_json_4xx_naming_the_problem() {
    let served = ServedNode::with_config_logging(&config(), "debug");
    let cases: Vec<Case> = [kserve_cases(), guest_route_cases(), admin_cases()].into_iter().flatten().collect();
    let mismatches: Vec<String> = cases.iter().filter_map(|case| case.mismatch(served.raw(&case.bytes()))).collect();
    assert!(mismatches.is_empty(), "{} of {} cases:\n{}", mismatches.len(), cases.len(), mismatches.join("\n"));
    // The same node still answers good requests.
    let reply = served.post("/t/alpha/image-classify", Some(KEY), &sample("chelsea.png"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["top"][0]["label"], "tiger cat");
    // Every key and token was sent, right and wrong, and none of them is
    // in the debug log.
    let log = served.stderr();
    assert!(log.contains("answered"), "the requests were logged: {log}");
    for secret in [KEY, OPERATOR, STRANGER] {
        assert!(!log.contains(secret), "`{secret}` is in the log");
    }
}

#[test]
fn requests_http_itself_cannot_carry_are_refused_without_harm() {
    let served = ServedNode::with_config(&config());
    let refusals: [(&str, Vec<u8>); 4] = [
        (
            "a path with raw bytes that are not UTF-8",
            b"GET /t/alpha/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("a request line that is not HTTP", b"HELLO THERE\r\n\r\n".to_vec()),
        ("a header block past hyper's buffer", {
            let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Padding: ".to_vec();
            request.extend(std::iter::repeat_n(b'p', 1 << 20));
            request.extend_from_slice(b"\r\n\r\n");
            request
        }),
        (
            "a Content-Length that is not a number",
            b"POST /t/alpha/echo HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in refusals {
        // hyper refuses these before the node sees them: a bare 4xx, or a
        // closed connection when the client is still sending. Never a hang.
        if let Some(reply) = served.raw(&request) {
            assert!((400..500).contains(&reply.status), "{what}: {} {}", reply.status, reply.text());
        }
    }
    let reply = served.post("/t/alpha/echo", Some(KEY), b"still here");
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn a_client_too_slow_with_its_headers_or_idle_too_long_is_cut_off_and_others_are_served() {
    let config = config().replacen("[node]\n", "[node]\nheader_read_timeout_ms = 500\n", 1);
    let served = ServedNode::with_config(&config);
    // One client says nothing; another starts its headers and stalls; a
    // third keeps its connection open after one request and sends no other.
    let silent = served.connect_raw(b"");
    let stalled = served.connect_raw(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
    let idle = served.connect_raw(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let reply = served.post("/t/alpha/echo", Some(KEY), b"meanwhile");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answered = String::from_utf8_lossy(&read_until_closed(idle)).into_owned();
    assert!(answered.starts_with("HTTP/1.1 200") && answered.ends_with("ok\n"), "idle: {answered}");
    for (what, stream) in [("silent", silent), ("stalled", stalled)] {
        let answer = String::from_utf8_lossy(&read_until_closed(stream)).into_owned();
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
    }
}
