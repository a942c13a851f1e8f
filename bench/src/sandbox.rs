//! What the sandbox costs: each example's handler run as the node runs it
//! (compiled to WebAssembly, a fresh instance per request, models through
//! `wasi:nn`) against the same handler compiled natively into this program,
//! calling the same loaded models directly.

use anyhow::Context;
use mantle::examples::{self, DEMO_TENANT, EXAMPLES};
use mantle::models::{ElementType, HostTensor, Model};
use mantle::runtime::{GuestModule, Request};
use mantle_guest::native::{Backend, Graph, Tensor};
use mantle_guest::{ErrorCode, InferenceError, TensorType};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A native handler: the example's own `handle`, linked in.
type Handler = fn(mantle_guest::Request) -> Result<mantle_guest::Response, mantle_guest::Error>;

fn native_handler(example: &str) -> Option<Handler> {
    match example {
        "image-classify" => Some(image_classify::handle),
        "speech-detect" => Some(speech_detect::handle),
        "text-embed" => Some(text_embed::handle),
        _ => None,
    }
}

/// Per example named in `bodies`, milliseconds per request in the sandbox
/// and natively, taking turns, after three of each to warm up. Fails if the
/// two ever answer differently.
pub fn measure(
    models_dir: &Path,
    runs: usize,
    bodies: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<serde_json::Value> {
    // The node `mantle serve` builds for the examples; the native handlers
    // call the very models it holds.
    let node = examples::examples_node(models_dir)?;
    let demo = node.tenant(DEMO_TENANT).context("the examples' node has the demo tenant")?;
    let models: BTreeMap<String, Arc<Model>> = EXAMPLES
        .iter()
        .filter_map(|example| Some((example.model.to_owned(), Arc::clone(&demo.model(example.model, None)?.model))))
        .collect();
    mantle_guest::native::install(Arc::new(NativeModels(models)));
    let runtime = &node.runtime;
    let executor = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut report = serde_json::Map::new();
    for (name, body) in bodies {
        let example = EXAMPLES
            .iter()
            .find(|example| example.name == name)
            .with_context(|| format!("`{name}` is not a bundled example"))?;
        let native = native_handler(name).with_context(|| format!("`{name}` has no native build here"))?;
        let module = demo.module(example.name).with_context(|| format!("{name}: the node does not serve it"))?;
        let request = post(body);
        let native_request = mantle_guest::Request {
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: Vec::new(),
            body: body.clone(),
        };
        let (sandboxed_ms, native_ms) = take_turns(
            name,
            ("the sandbox", "the native build"),
            runs,
            || {
                let answer = executor.block_on(runtime.handle(&module, request.clone(), "bench"))?;
                Ok((answer.status, answer.body))
            },
            || {
                let answer = native(native_request.clone()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                Ok((answer.status, answer.body))
            },
        )?;
        report.insert(name.clone(), serde_json::json!({ "sandbox_ms": sandboxed_ms, "native_ms": native_ms }));
    }
    Ok(serde_json::Value::Object(report))
}

/// Per example named in `bodies`, milliseconds per request in the sandbox
/// on a node that pre-initializes guests and on one that does not, taking
/// turns, after three of each to warm up. Fails if the two ever answer
/// differently, byte for byte.
pub fn snapshots(
    models_dir: &Path,
    runs: usize,
    bodies: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<serde_json::Value> {
    let snapshotted = examples::examples_node(models_dir)?;
    let from_scratch = examples::examples_node_with(models_dir, |settings| settings.pre_initialize = false)?;
    let executor = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut report = serde_json::Map::new();
    for (name, body) in bodies {
        let module = |node: &mantle::node::Node| {
            node.tenant(DEMO_TENANT)
                .and_then(|demo| demo.module(name))
                .with_context(|| format!("{name}: the node does not serve it"))
        };
        let (with, without) = (module(&snapshotted)?, module(&from_scratch)?);
        let request = post(body);
        let answer = |node: &'static str, runtime: &mantle::runtime::Runtime, module: &GuestModule| {
            let response = executor.block_on(runtime.handle(module, request.clone(), node))?;
            Ok((response.status, response.headers, response.body))
        };
        let (with_ms, without_ms) = take_turns(
            name,
            ("the snapshot", "the node without snapshots"),
            runs,
            || answer("snapshot", &snapshotted.runtime, &with),
            || answer("no-snapshot", &from_scratch.runtime, &without),
        )?;
        report.insert(name.clone(), serde_json::json!({ "snapshot_ms": with_ms, "no_snapshot_ms": without_ms }));
    }
    Ok(serde_json::Value::Object(report))
}

/// A `POST /` with `body`, as a client of the example would send it.
pub(crate) fn post(body: &[u8]) -> Request {
    Request {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: String::new(),
        headers: Vec::new(),
        body: body.to_vec(),
    }
}

/// Asks `first` and `second` in turn, `runs` times after 3 each to warm
/// up, and returns the milliseconds each took; fails if they ever answer
/// differently. `who` names the two in that message.
fn take_turns<A: PartialEq + std::fmt::Debug>(
    name: &str,
    who: (&str, &str),
    runs: usize,
    mut first: impl FnMut() -> anyhow::Result<A>,
    mut second: impl FnMut() -> anyhow::Result<A>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut first_ms, mut second_ms) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for round in 0..runs + 3 {
        let started = Instant::now();
        let a = first().with_context(|| format!("{name} in {}", who.0))?;
        let first_time = started.elapsed();
        let started = Instant::now();
        let b = second().with_context(|| format!("{name} in {}", who.1))?;
        let second_time = started.elapsed();
        anyhow::ensure!(a == b, "{name}: {} answered {a:?}, {} {b:?}", who.0, who.1);
        if round >= 3 {
            first_ms.push(first_time.as_secs_f64() * 1e3);
            second_ms.push(second_time.as_secs_f64() * 1e3);
        }
    }
    Ok((first_ms, second_ms))
}

/// The loaded models, served to native guests by name.
struct NativeModels(BTreeMap<String, Arc<Model>>);

impl Backend for NativeModels {
    fn load(&self, name: &str) -> Result<Arc<dyn Graph>, InferenceError> {
        match self.0.get(name) {
            Some(model) => Ok(Arc::new(NativeModel(model.clone()))),
            None => Err(InferenceError { code: ErrorCode::NotFound, message: format!("no model `{name}`") }),
        }
    }
}

struct NativeModel(Arc<Model>);

impl Graph for NativeModel {
    fn compute(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, InferenceError> {
        let invalid = |message: String| InferenceError { code: ErrorCode::InvalidArgument, message };
        let inputs = inputs
            .into_iter()
            .map(|(name, tensor)| {
                let (dimensions, ty, data) = tensor.into_parts();
                let element_type =
                    element_type(ty).ok_or_else(|| invalid(format!("{ty:?} tensors are not supported")))?;
                let shape = dimensions.into_iter().map(|d| d as usize).collect();
                Ok((name, HostTensor { element_type, shape, data }))
            })
            .collect::<Result<Vec<_>, InferenceError>>()?;
        let outputs =
            self.0.run(inputs).map_err(|e| InferenceError { code: ErrorCode::RuntimeError, message: e.to_string() })?;
        outputs
            .into_iter()
            .map(|(name, tensor)| {
                let dimensions = tensor
                    .shape
                    .iter()
                    .map(|&d| u32::try_from(d).map_err(|_| invalid(format!("output `{name}` is too large"))))
                    .collect::<Result<Vec<u32>, _>>()?;
                Ok((name, Tensor::from_parts(dimensions, tensor_type(tensor.element_type), tensor.data)))
            })
            .collect()
    }
}

fn element_type(ty: TensorType) -> Option<ElementType> {
    Some(match ty {
        TensorType::Fp16 => ElementType::F16,
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::U8 => ElementType::U8,
        TensorType::I32 => ElementType::I32,
        TensorType::I64 => ElementType::I64,
        TensorType::Bf16 => return None,
    })
}

fn tensor_type(element_type: ElementType) -> TensorType {
    match element_type {
        ElementType::F16 => TensorType::Fp16,
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::U8 => TensorType::U8,
        ElementType::I32 => TensorType::I32,
        ElementType::I64 => TensorType::I64,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Keeps the native build of the examples working: `measure` fails if
    /// the two builds ever answer differently.
    #[test]
    fn each_example_answers_alike_in_the_sandbox_and_natively() -> anyhow::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let models = root.join("models");
        let bodies = BTreeMap::from([
            ("image-classify".to_owned(), std::fs::read(models.join("samples/chelsea.png"))?),
            ("speech-detect".to_owned(), std::fs::read(models.join("samples/speech.wav"))?),
            ("text-embed".to_owned(), b"A cat sits on the mat".to_vec()),
        ]);
        let report = super::measure(&models, 1, &bodies)?;
        for name in bodies.keys() {
            assert_eq!(report[name]["native_ms"].as_array().map(Vec::len), Some(1), "{name}: {report}");
        }
        Ok(())
    }
}
