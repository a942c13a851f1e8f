//! Test guest: tries to reach a model the way the request says, and reports
//! the `wasi:nn` error code it got.
//!
//! `POST /load-by-name` with the name as the body; `POST /load` with raw
//! model bytes as the body.

use mantle_guest::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use mantle_guest::{Error, InferenceError, Model, Request, Response};
use serde::Serialize;

#[derive(Serialize)]
struct Outcome {
    loaded: bool,
    code: Option<&'static str>,
    message: Option<String>,
}

fn handle(request: Request) -> Result<Response, Error> {
    let result = match request.path.as_str() {
        "/load-by-name" => Model::load(request.text()?).map(drop),
        "/load" => graph::load(&[request.body.clone()], GraphEncoding::Onnx, ExecutionTarget::Cpu)
            .map(drop)
            .map_err(|e| InferenceError { code: e.code(), message: e.data() }),
        other => return Err(Error::invalid_input(format!("unknown probe {other}"))),
    };
    let outcome = match result {
        Ok(()) => Outcome { loaded: true, code: None, message: None },
        Err(e) => Outcome { loaded: false, code: Some(e.code_name()), message: Some(e.message) },
    };
    Response::json(&outcome)
}

mantle_guest::handler!(handle);
