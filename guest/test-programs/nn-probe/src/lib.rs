//! Test guest: tries to reach a model the way the request says, and reports
//! the `wasi:nn` error code it got.
//!
//! `POST /load-by-name` with the name as the body; `POST /load` with raw
//! model bytes as the body; `POST /compute/{case}` runs `efficientnet-lite0`
//! (or `minilm-l6`) with inputs that are wrong in the way `case` names.

use mantle_guest::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use mantle_guest::{Error, InferenceError, Model, Request, Response, Tensor, TensorType};
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
        "/load" => graph::load(std::slice::from_ref(&request.body), GraphEncoding::Onnx, ExecutionTarget::Cpu)
            .map(drop)
            .map_err(|e| InferenceError { code: e.code(), message: e.data() }),
        "/compute/right" => compute(vec![("input", image(&[1, 3, 224, 224]))]),
        "/compute/wrong-shape" => compute(vec![("input", image(&[1, 3, 100, 100]))]),
        "/compute/wrong-rank" => compute(vec![("input", image(&[3, 224, 224]))]),
        "/compute/wrong-type" => {
            compute(vec![("input", Tensor::from_slice(&[1, 3, 224, 224], &vec![0i64; 3 * 224 * 224]))])
        }
        "/compute/wrong-name" => compute(vec![("pixels", image(&[1, 3, 224, 224]))]),
        "/compute/missing-input" => compute(vec![]),
        "/compute/short-data" => compute(vec![("input", Tensor::new(&[1, 3, 224, 224], TensorType::Fp32, &[0u8; 12]))]),
        "/compute/rank-1000" => compute(vec![("input", Tensor::new(&[1; 1000], TensorType::Fp32, &[0u8; 4]))]),
        "/compute/overflowing-shape" => {
            compute(vec![("input", Tensor::new(&[u32::MAX, u32::MAX, u32::MAX, 2], TensorType::Fp32, &[0u8; 16]))])
        }
        "/compute/bf16" => {
            compute(vec![("input", Tensor::new(&[1, 3, 224, 224], TensorType::Bf16, &vec![0u8; 2 * 3 * 224 * 224]))])
        }
        "/compute/sequence-mismatch" => Model::load("minilm-l6").and_then(|model| {
            let ids = |n: u32| Tensor::from_slice(&[1, n], &vec![101i64; n as usize]);
            model.run([("input_ids", ids(5)), ("attention_mask", ids(6)), ("token_type_ids", ids(5))]).map(drop)
        }),
        other => return Err(Error::invalid_input(format!("unknown probe {other}"))),
    };
    let outcome = match result {
        Ok(()) => Outcome { loaded: true, code: None, message: None },
        Err(e) => Outcome { loaded: false, code: Some(e.code_name()), message: Some(e.message) },
    };
    Response::json(&outcome)
}

fn image(dims: &[u32]) -> Tensor {
    let len: u32 = dims.iter().product();
    Tensor::from_slice(dims, &vec![0.0f32; len as usize])
}

fn compute(inputs: Vec<(&str, Tensor)>) -> Result<(), InferenceError> {
    Model::load("efficientnet-lite0")?.run(inputs).map(drop)
}

mantle_guest::handler!(handle);
