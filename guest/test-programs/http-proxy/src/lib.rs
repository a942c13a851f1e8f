//! Test guest of the standard `wasi:http/proxy` world, written with the
//! `wasip2` crate's bindings as a component for `wasmtime serve` or Spin
//! is, that also imports `wasi:nn`. Its path says what it does: echo the
//! request, run a model by name, send a request out, or misbehave (loop,
//! take memory, answer too much, or not at all).

use serde_json::{Value, json};
use std::io::{Read, Write};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

/// `wasi:nn`, which the proxy world does not have.
#[allow(clippy::all, missing_docs)]
mod nn {
    wit_bindgen::generate!({
        inline: "
            package mantle:http-proxy-test;

            world models {
                import wasi:nn/graph@0.2.0-rc-2024-10-28;
                import wasi:nn/inference@0.2.0-rc-2024-10-28;
                import wasi:nn/tensor@0.2.0-rc-2024-10-28;
                import wasi:nn/errors@0.2.0-rc-2024-10-28;
            }
        ",
        path: "../../../wit/deps/wasi-nn",
        generate_all,
    });
}

use nn::wasi::nn::{errors, graph, tensor};

struct Proxy;

impl wasip2::exports::http::incoming_handler::Guest for Proxy {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| {
            query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).unwrap_or("").to_owned()
        };
        let (status, body) = match path {
            "/echo" => (200, echo(&request)),
            "/model" => run_model(&param("name"), &param("input"), &param("shape")),
            "/outgoing" => send_out(&param("to")),
            "/loop" =>
            {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            "/memory" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            // Returns without answering: the response outparam is dropped.
            "/silent" => return,
            "/respond" => {
                let mib: usize = param("mib").parse().unwrap_or(1);
                return respond(out, 200, "application/octet-stream", &vec![b'x'; mib << 20]);
            }
            other => (404, json!({ "error": format!("no such path {other}") })),
        };
        respond(out, status, "application/json", body.to_string().as_bytes());
    }
}

/// What the component was given: method, path, headers and the body.
fn echo(request: &IncomingRequest) -> Value {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        other => format!("{other:?}"),
    };
    let headers: Vec<(String, String)> = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume()
        && let Ok(mut stream) = incoming.stream()
    {
        let _ = stream.read_to_end(&mut body);
    }
    json!({
        "method": method,
        "path_with_query": request.path_with_query(),
        "authority": request.authority(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    })
}

/// Runs the model `name` on zeros of `shape`, fed as its input `input`.
fn run_model(name: &str, input: &str, shape: &str) -> (u16, Value) {
    let dims: Vec<u32> = shape.split(',').filter_map(|d| d.parse().ok()).collect();
    let count: usize = dims.iter().map(|&d| d as usize).product();
    let outcome = graph::load_by_name(name).and_then(|graph| graph.init_execution_context()).and_then(|context| {
        let zeros = tensor::Tensor::new(&dims, tensor::TensorType::Fp32, &vec![0u8; count * 4]);
        context.compute(vec![(input.to_owned(), zeros)])
    });
    match outcome {
        Ok(outputs) => {
            let shapes: serde_json::Map<String, Value> =
                outputs.iter().map(|(name, tensor)| (name.clone(), json!(tensor.dimensions()))).collect();
            (200, json!({ "outputs": shapes }))
        }
        Err(error) => {
            let status = if error.code() == errors::ErrorCode::Security { 403 } else { 500 };
            (status, json!({ "code": case_name(&error.code()), "message": error.data() }))
        }
    }
}

/// Sends a GET to `to` (`HOST:PORT`) and says what came of it.
fn send_out(to: &str) -> (u16, Value) {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(to));
    let _ = request.set_path_with_query(Some("/"));
    let outcome = match wasip2::http::outgoing_handler::handle(request, None) {
        Err(code) => Err(case_name(&code)),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => Ok(response.status()),
                Some(Ok(Err(code))) => Err(case_name(&code)),
                Some(Err(())) | None => Err("no response".to_owned()),
            }
        }
    };
    match outcome {
        Ok(status) => (200, json!({ "sent": true, "status": status })),
        Err(error) => (502, json!({ "sent": false, "error": error })),
    }
}

/// The name of an enum or variant case, without its type or payload:
/// `Security`, `HttpRequestDenied`.
fn case_name(value: &impl std::fmt::Debug) -> String {
    let shown = format!("{value:?}");
    let case = shown.rsplit("::").next().unwrap_or(&shown);
    case.split(['(', ' ', '{']).next().unwrap_or(case).to_owned()
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_owned(), content_type.as_bytes().to_vec())])
        .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

wasip2::http::proxy::export!(Proxy);
