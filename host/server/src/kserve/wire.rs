//! The KServe V2 (Open Inference Protocol) wire format of inference
//! requests and responses: JSON tensors, and the binary tensor data
//! extension, in which a JSON header of `Inference-Header-Content-Length`
//! bytes is followed by the raw tensors.

use mantle_models::{ElementType, HostTensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that gives the length of the JSON part of a binary message.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// An inference request as sent.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The protocol's name of an element type.
pub fn datatype_name(element_type: ElementType) -> &'static str {
    match element_type {
        ElementType::F16 => "FP16",
        ElementType::F32 => "FP32",
        ElementType::F64 => "FP64",
        ElementType::U8 => "UINT8",
        ElementType::I32 => "INT32",
        ElementType::I64 => "INT64",
    }
}

fn element_type(datatype: &str) -> Result<ElementType, String> {
    Ok(match datatype {
        "FP16" => ElementType::F16,
        "FP32" => ElementType::F32,
        "FP64" => ElementType::F64,
        "UINT8" => ElementType::U8,
        "INT32" => ElementType::I32,
        "INT64" => ElementType::I64,
        other => {
            return Err(format!("datatype `{other}` is not supported; use FP16, FP32, FP64, UINT8, INT32 or INT64"));
        }
    })
}

/// Reads an inference request: `body` as sent, and the value of its
/// `Inference-Header-Content-Length` header if it had one. Any bytes give
/// either the request and its input tensors or a message for the client.
pub fn parse_request(
    body: &[u8],
    header_length: Option<&str>,
) -> Result<(InferRequest, Vec<(String, HostTensor)>), String> {
    let (json_part, binary) = split_body(body, header_length)?;
    let request: InferRequest =
        serde_json::from_slice(json_part).map_err(|e| format!("the request is not a valid inference request: {e}"))?;
    let inputs = decode_inputs(&request, binary)?;
    Ok((request, inputs))
}

/// Splits a request body into its JSON header and binary part.
fn split_body<'a>(body: &'a [u8], header_length: Option<&str>) -> Result<(&'a [u8], &'a [u8]), String> {
    let Some(length) = header_length else {
        return Ok((body, &[]));
    };
    let length: usize =
        length.trim().parse().map_err(|_| format!("Inference-Header-Content-Length `{length}` is not a byte count"))?;
    if length > body.len() {
        return Err(format!("Inference-Header-Content-Length is {length}, but the body has only {} bytes", body.len()));
    }
    Ok(body.split_at(length))
}

/// The tensors of `request`, with their data taken from the JSON `data`
/// fields or, in order, from `binary`.
fn decode_inputs(request: &InferRequest, binary: &[u8]) -> Result<Vec<(String, HostTensor)>, String> {
    let mut rest = binary;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let at = |message: String| format!("input `{}`: {message}", input.name);
        let element_type = element_type(&input.datatype).map_err(at)?;
        let shape = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| at(format!("dimension {d} is too large"))))
            .collect::<Result<Vec<_>, _>>()?;
        let expected = HostTensor::expected_len(element_type, &shape).map_err(at)?;
        let data = match (input.parameters.get("binary_data_size"), &input.data) {
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| at("binary_data_size must be a byte count".to_owned()))?;
                if size > rest.len() {
                    return Err(at(format!(
                        "binary_data_size is {size}, but only {} bytes of binary data are left",
                        rest.len()
                    )));
                }
                let (data, after) = rest.split_at(size);
                rest = after;
                data.to_vec()
            }
            (None, Some(data)) => encode_json(data, element_type, expected / element_type.size()).map_err(at)?,
            (Some(_), Some(_)) => return Err(at("has both binary_data_size and data".to_owned())),
            (None, None) => return Err(at("has neither data nor binary_data_size".to_owned())),
        };
        if data.len() != expected {
            return Err(at(format!(
                "shape {shape:?} of {} needs {} elements, but {} were given",
                input.datatype,
                expected / element_type.size(),
                data.len() / element_type.size()
            )));
        }
        tensors.push((input.name.clone(), HostTensor { element_type, shape, data }));
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes of binary data follow the last binary input", rest.len()));
    }
    Ok(tensors)
}

/// Converts JSON numbers, flat or nested in row-major order, to
/// little-endian elements; more than `elements` of them is an error as soon
/// as it is seen.
fn encode_json(data: &Value, element_type: ElementType, elements: usize) -> Result<Vec<u8>, String> {
    let expected_bytes = elements.saturating_mul(element_type.size());
    // Reserve no more than a small body could need: the shape alone is
    // the client's word, and a few bytes of JSON can claim gigabytes.
    let mut bytes = Vec::with_capacity(expected_bytes.min(1 << 20));
    let mut stack = vec![data];
    // Depth-first, keeping order: arrays are pushed reversed.
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Number(number) => push_element(number, element_type, &mut bytes)?,
            other => return Err(format!("data holds {other}, which is not a number")),
        }
        if bytes.len() > expected_bytes {
            return Err(format!("data holds more than the {elements} elements its shape has room for"));
        }
    }
    Ok(bytes)
}

fn push_element(number: &serde_json::Number, element_type: ElementType, out: &mut Vec<u8>) -> Result<(), String> {
    let out_of_range = || format!("{number} is not a valid {}", datatype_name(element_type));
    let float = || number.as_f64().ok_or_else(out_of_range);
    let integer = || number.as_i64().ok_or_else(out_of_range);
    match element_type {
        ElementType::F16 => out.extend_from_slice(&half::f16::from_f64(float()?).to_le_bytes()),
        ElementType::F32 => out.extend_from_slice(&(float()? as f32).to_le_bytes()),
        ElementType::F64 => out.extend_from_slice(&float()?.to_le_bytes()),
        ElementType::U8 => out.push(u8::try_from(integer()?).map_err(|_| out_of_range())?),
        ElementType::I32 => {
            out.extend_from_slice(&i32::try_from(integer()?).map_err(|_| out_of_range())?.to_le_bytes())
        }
        ElementType::I64 => out.extend_from_slice(&integer()?.to_le_bytes()),
    }
    Ok(())
}

/// The elements of `tensor` as JSON numbers, flat in row-major order.
pub fn decode_json(tensor: &HostTensor) -> Value {
    fn each<const N: usize, T: Into<Value>>(data: &[u8], convert: impl Fn([u8; N]) -> T) -> Value {
        Value::Array(
            data.chunks_exact(N)
                .map(|chunk| {
                    let mut bytes = [0; N];
                    bytes.copy_from_slice(chunk);
                    convert(bytes).into()
                })
                .collect(),
        )
    }
    let data = &tensor.data;
    match tensor.element_type {
        ElementType::F16 => each(data, |b| half::f16::from_le_bytes(b).to_f64()),
        ElementType::F32 => each(data, |b| f64::from(f32::from_le_bytes(b))),
        ElementType::F64 => each(data, f64::from_le_bytes),
        ElementType::U8 => each(data, |[b]: [u8; 1]| b),
        ElementType::I32 => each(data, i32::from_le_bytes),
        ElementType::I64 => each(data, i64::from_le_bytes),
    }
}

/// Whether a parameter map says `name = true`.
pub fn flag(parameters: &Map<String, Value>, name: &str) -> Option<bool> {
    parameters.get(name).and_then(Value::as_bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: Value) -> InferRequest {
        serde_json::from_value(json).expect("a valid request")
    }

    #[test]
    fn nested_and_flat_json_data_give_the_same_bytes() {
        let nested = request(serde_json::json!({"inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, -2], [3, 4]]}]}));
        let flat = request(serde_json::json!({"inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, -2, 3, 4]}]}));
        let expected: Vec<u8> = [1i32, -2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode_inputs(&nested, &[]).expect("decodes")[0].1.data, expected);
        assert_eq!(decode_inputs(&flat, &[]).expect("decodes")[0].1.data, expected);
    }

    #[test]
    fn binary_inputs_are_taken_in_order_and_must_add_up() {
        let req = request(serde_json::json!({"inputs": [
            {"name": "a", "shape": [2], "datatype": "UINT8", "parameters": {"binary_data_size": 2}},
            {"name": "b", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}));
        let binary = [7, 8, 0, 0, 128, 63];
        let tensors = decode_inputs(&req, &binary).expect("decodes");
        assert_eq!(tensors[0].1.data, [7, 8]);
        assert_eq!(tensors[1].1.data, 1.0f32.to_le_bytes());
        let extra = decode_inputs(&req, &[0; 7]).expect_err("one byte too many");
        assert!(extra.contains("1 bytes of binary data follow"), "{extra}");
        let short = decode_inputs(&req, &[0; 5]).expect_err("one byte short");
        assert!(short.contains("input `b`"), "{short}");
    }

    #[test]
    fn wrong_element_counts_and_values_name_the_input() {
        let short = request(serde_json::json!({"inputs": [
            {"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0]}]}));
        let message = decode_inputs(&short, &[]).expect_err("two of three");
        assert!(message.contains("input `x`") && message.contains("needs 3 elements, but 2"), "{message}");
        let long = request(serde_json::json!({"inputs": [
            {"name": "w", "shape": [2], "datatype": "FP32", "data": [[1.0, 2.0], [3.0]]}]}));
        let message = decode_inputs(&long, &[]).expect_err("three of two");
        assert!(message.contains("input `w`") && message.contains("more than the 2 elements"), "{message}");
        let overflow = request(serde_json::json!({"inputs": [
            {"name": "y", "shape": [1], "datatype": "UINT8", "data": [300]}]}));
        assert!(decode_inputs(&overflow, &[]).expect_err("300 is no u8").contains("300 is not a valid UINT8"));
        let text = request(serde_json::json!({"inputs": [
            {"name": "z", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}));
        assert!(decode_inputs(&text, &[]).expect_err("BYTES").contains("`BYTES` is not supported"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// An element type and `count` values of it, as JSON numbers that
    /// convert exactly, with their little-endian bytes.
    fn elements(count: usize) -> impl Strategy<Value = (ElementType, Vec<Value>, Vec<u8>)> {
        fn finite<T: Copy>(
            values: Vec<T>,
            json: impl Fn(T) -> Value,
            bytes: impl Fn(T) -> Vec<u8>,
        ) -> (Vec<Value>, Vec<u8>) {
            (values.iter().map(|&v| json(v)).collect(), values.iter().flat_map(|&v| bytes(v)).collect())
        }
        prop_oneof![
            prop::collection::vec(
                any::<u16>().prop_map(half::f16::from_bits).prop_filter("finite", |v| v.is_finite()),
                count
            )
            .prop_map(|v| finite(v, |x| x.to_f64().into(), |x| x.to_le_bytes().to_vec()))
            .prop_map(|(j, b)| (ElementType::F16, j, b)),
            prop::collection::vec(any::<f32>().prop_filter("finite", |v| v.is_finite()), count)
                .prop_map(|v| finite(v, |x| f64::from(x).into(), |x| x.to_le_bytes().to_vec()))
                .prop_map(|(j, b)| (ElementType::F32, j, b)),
            prop::collection::vec(any::<f64>().prop_filter("finite", |v| v.is_finite()), count)
                .prop_map(|v| finite(v, Value::from, |x| x.to_le_bytes().to_vec()))
                .prop_map(|(j, b)| (ElementType::F64, j, b)),
            prop::collection::vec(any::<u8>(), count)
                .prop_map(|v| finite(v, Value::from, |x| vec![x]))
                .prop_map(|(j, b)| (ElementType::U8, j, b)),
            prop::collection::vec(any::<i32>(), count)
                .prop_map(|v| finite(v, Value::from, |x| x.to_le_bytes().to_vec()))
                .prop_map(|(j, b)| (ElementType::I32, j, b)),
            prop::collection::vec(any::<i64>(), count)
                .prop_map(|v| finite(v, Value::from, |x| x.to_le_bytes().to_vec()))
                .prop_map(|(j, b)| (ElementType::I64, j, b)),
        ]
    }

    /// A shape of rank 0 to 4 with a few elements, and a tensor of it.
    fn tensors() -> impl Strategy<Value = (Vec<usize>, ElementType, Vec<Value>, Vec<u8>)> {
        prop::collection::vec(0..4usize, 0..=4).prop_flat_map(|shape| {
            let count = shape.iter().product();
            elements(count).prop_map(move |(t, json, bytes)| (shape.clone(), t, json, bytes))
        })
    }

    /// `flat` nested in row-major order as `shape` lays it out.
    fn nest(flat: &[Value], shape: &[usize]) -> Value {
        match shape {
            [] => flat[0].clone(),
            [_] => Value::Array(flat.to_vec()),
            [first, rest @ ..] => {
                let stride = rest.iter().product::<usize>();
                Value::Array((0..*first).map(|i| nest(&flat[i * stride..(i + 1) * stride], rest)).collect())
            }
        }
    }

    fn one_input(shape: &[usize], element_type: ElementType, body: Value) -> Value {
        let mut input = json!({"name": "x", "shape": shape, "datatype": datatype_name(element_type)});
        input.as_object_mut().expect("an object").extend(body.as_object().expect("an object").clone());
        json!({"inputs": [input]})
    }

    proptest! {
        #[test]
        fn flat_nested_and_binary_data_give_the_same_tensor((shape, element_type, values, bytes) in tensors()) {
            let expected = HostTensor { element_type, shape: shape.clone(), data: bytes.clone() };
            let flat = one_input(&shape, element_type, json!({"data": values}));
            let nested = one_input(&shape, element_type, json!({"data": nest(&values, &shape)}));
            for request in [flat, nested] {
                let body = serde_json::to_vec(&request).expect("JSON");
                let (_, inputs) = parse_request(&body, None).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&inputs[0].1, &expected);
            }
            let header = one_input(&shape, element_type, json!({"parameters": {"binary_data_size": bytes.len()}}));
            let mut body = serde_json::to_vec(&header).expect("JSON");
            let header_length = body.len().to_string();
            body.extend_from_slice(&bytes);
            let (_, inputs) = parse_request(&body, Some(&header_length)).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&inputs[0].1, &expected);
            // And back to the same JSON numbers.
            prop_assert_eq!(decode_json(&expected), Value::Array(values));
        }

        #[test]
        fn data_that_disagrees_with_its_shape_is_refused_by_name(
            (shape, element_type, values, bytes) in tensors(),
            extra in 1..3usize,
            drop_instead in any::<bool>(),
        ) {
            let mut values = values;
            let mut bytes = bytes;
            if drop_instead && !values.is_empty() {
                values.pop();
                bytes.truncate(bytes.len() - element_type.size());
            } else {
                values.extend(std::iter::repeat_n(Value::from(1), extra));
                bytes.extend(std::iter::repeat_n(1, extra * element_type.size()));
            }
            let request = serde_json::to_vec(&one_input(&shape, element_type, json!({"data": values}))).expect("JSON");
            let message = parse_request(&request, None).expect_err("a JSON count mismatch");
            prop_assert!(message.contains("input `x`"), "{}", message);
            let header = one_input(&shape, element_type, json!({"parameters": {"binary_data_size": bytes.len()}}));
            let mut body = serde_json::to_vec(&header).expect("JSON");
            let header_length = body.len().to_string();
            body.extend_from_slice(&bytes);
            let message = parse_request(&body, Some(&header_length)).expect_err("a binary size mismatch");
            prop_assert!(message.contains("input `x`"), "{}", message);
        }

        #[test]
        fn binary_inputs_must_account_for_every_byte(
            sizes in prop::collection::vec(0..64usize, 1..5),
            trailing in 0..3usize,
            header_excess in 0..3usize,
        ) {
            let inputs: Vec<Value> = sizes.iter().enumerate().map(|(i, size)| json!({
                "name": format!("in{i}"), "shape": [size], "datatype": "UINT8",
                "parameters": {"binary_data_size": size},
            })).collect();
            let mut body = serde_json::to_vec(&json!({"inputs": inputs})).expect("JSON");
            let header_length = (body.len() + header_excess).to_string();
            let total: usize = sizes.iter().sum();
            body.extend((0..total + trailing).map(|i| i as u8));
            let parsed = parse_request(&body, Some(&header_length));
            if trailing == 0 && header_excess == 0 {
                let (_, tensors) = parsed.map_err(TestCaseError::fail)?;
                let lengths: Vec<usize> = tensors.iter().map(|(_, t)| t.data.len()).collect();
                prop_assert_eq!(lengths, sizes);
            } else {
                prop_assert!(parsed.is_err());
            }
        }

        #[test]
        fn any_bytes_give_a_request_or_a_message(body in prop::collection::vec(any::<u8>(), 0..256), header in any::<Option<u16>>()) {
            let header = header.map(|h| h.to_string());
            if let Ok((_, inputs)) = parse_request(&body, header.as_deref()) {
                for (_, tensor) in inputs {
                    prop_assert!(tensor.check_data_len().is_ok());
                }
            }
        }
    }
}
