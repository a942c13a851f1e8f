//! Test guest: runs a granted model on tensors described in the request and
//! answers the outputs exactly as the host returned them.
//!
//! Body: `{"model": "...", "inputs": [{"name", "type", "dims", "data_hex"}]}`,
//! where `type` is a wasi:nn tensor type (`FP16`, `FP32`, `FP64`, `U8`,
//! `I32`, `I64`) and `data_hex` the little-endian bytes. The answer has the
//! same shape under `outputs`.

use mantle_guest::{Error, Model, Request, Response, Tensor, TensorType};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Call {
    model: String,
    inputs: Vec<Described>,
}

#[derive(Serialize, Deserialize)]
struct Described {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    dims: Vec<u32>,
    data_hex: String,
}

#[derive(Serialize)]
struct Answer {
    outputs: Vec<Described>,
}

const TYPES: [(&str, TensorType); 7] = [
    ("FP16", TensorType::Fp16),
    ("FP32", TensorType::Fp32),
    ("FP64", TensorType::Fp64),
    ("BF16", TensorType::Bf16),
    ("U8", TensorType::U8),
    ("I32", TensorType::I32),
    ("I64", TensorType::I64),
];

fn handle(request: Request) -> Result<Response, Error> {
    let call: Call = request.json()?;
    let mut inputs = Vec::new();
    for input in call.inputs {
        let ty = TYPES
            .iter()
            .find(|(name, _)| *name == input.ty)
            .map(|(_, ty)| *ty)
            .ok_or_else(|| Error::invalid_input(format!("unknown tensor type {}", input.ty)))?;
        let data = from_hex(&input.data_hex).ok_or_else(|| Error::invalid_input("data_hex is not hex"))?;
        inputs.push((input.name, Tensor::new(&input.dims, ty, &data)));
    }
    let mut outputs = Model::load(&call.model)?.run(inputs)?;
    let names: Vec<String> = outputs.names().map(str::to_owned).collect();
    let mut described = Vec::new();
    for name in names {
        let tensor = outputs.take(&name)?;
        let ty = TYPES.iter().find(|(_, ty)| *ty == tensor.ty()).map_or("?", |(name, _)| name);
        described.push(Described {
            name,
            ty: ty.to_owned(),
            dims: tensor.dimensions(),
            data_hex: to_hex(&tensor.data()),
        });
    }
    Response::json(&Answer { outputs: described })
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

mantle_guest::handler!(handle);
