//! What a guest's language costs: the text-embed pipeline written in Rust
//! (the bundled example), Python (componentize-py) and JavaScript
//! (componentize-js), each compiled, loaded and served by one runtime with
//! the same model.

use crate::sandbox::post;
use anyhow::Context;
use mantle::examples::{self, DEMO_TENANT, EXAMPLES};
use mantle::runtime::{
    GuestModule, IsolatedCompiler, ModuleLimits, ModuleSpec, Runtime, RuntimeConfig, compile_to_bytes,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODEL: &str = "minilm-l6";

/// One language's component: its bytes, and the module serving it.
struct Contender<'a> {
    name: String,
    runtime: &'a Runtime,
    module: Arc<GuestModule>,
    report: serde_json::Map<String, serde_json::Value>,
}

/// Per component (`rust`, the bundled text-embed, then each `NAME=PATH`):
/// compile time and compiled size; the data its memories start from; the
/// resident memory the process gains as it loads the module and over its
/// first three requests; and milliseconds per request on `text`, and on
/// an empty body
/// (which every one of them refuses after instantiating: the cost of an
/// instance and a call), taking turns, after three of each to warm up.
/// Fails unless every embedding is within 1e-6 of the Rust example's.
pub fn measure(
    models_dir: &Path,
    runs: usize,
    text: &Path,
    mantle: &Path,
    components: Vec<(String, PathBuf)>,
) -> anyhow::Result<serde_json::Value> {
    let body = std::fs::read(text).with_context(|| format!("reading {}", text.display()))?;
    let node = examples::examples_node(models_dir)?;
    let demo = node.tenant(DEMO_TENANT).context("the examples' node has the demo tenant")?;
    let model = Arc::clone(&demo.model(MODEL, None).context("the examples' node holds minilm-l6")?.model);
    // The other languages' modules are loaded as a node loads them:
    // compiled in a child process (`mantle compile-guest`) into the code
    // cache, and mapped from there, so that the compiler's memory is not
    // counted as theirs.
    let compiled_apart = Runtime::new(&RuntimeConfig {
        compiler: Some(IsolatedCompiler {
            program: mantle.to_owned(),
            memory_bytes: 4 << 30,
            timeout: Duration::from_secs(300),
        }),
        ..RuntimeConfig::default()
    })?;
    let executor = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;

    let rust = EXAMPLES.iter().find(|e| e.name == "text-embed").context("the text-embed example")?;
    let mut named = vec![("rust".to_owned(), rust.wasm.to_vec())];
    for (name, path) in components {
        named.push((name, std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?));
    }
    let mut contenders = Vec::new();
    for (name, wasm) in named {
        eprintln!("languages: compiling and loading {name}");
        let mut report = serde_json::Map::new();
        let started = Instant::now();
        let code = compile_to_bytes(&wasm).map_err(anyhow::Error::msg)?;
        report.insert("compile_ms".into(), (started.elapsed().as_secs_f64() * 1e3).into());
        report.insert("compiled_bytes".into(), code.len().into());
        report.insert("component_bytes".into(), wasm.len().into());
        report.insert("data_bytes".into(), data_bytes(&wasm)?.into());
        drop(code);
        let before = crate::memory::resident_bytes()?;
        let runtime = if name == "rust" { &node.runtime } else { &compiled_apart };
        let module = if name == "rust" {
            // Loaded with the node, and pre-initialized there: what it
            // added then is not seen here.
            demo.module("text-embed").context("the node serves text-embed")?
        } else {
            let spec = ModuleSpec {
                id: name.clone(),
                tenant: "bench".to_owned(),
                grants: BTreeMap::from([(MODEL.to_owned(), Arc::clone(&model))]),
                limits: ModuleLimits::default(),
                config: BTreeMap::new(),
            };
            // As a node loads it: compiled once into the code cache, and
            // the code mapped from there.
            let cache = std::env::temp_dir().join(format!("mantle-bench-languages-{}", std::process::id()));
            let component = mantle::runtime::ComponentBytes::new(&wasm);
            let loaded = compiled_apart.load_component(spec, component, Some(&cache));
            let _ = std::fs::remove_dir_all(&cache);
            let module = Arc::new(loaded?.0);
            let loaded = crate::memory::resident_bytes()?.saturating_sub(before);
            report.insert("resident_loaded_bytes".into(), loaded.into());
            module
        };
        let before = crate::memory::resident_bytes()?;
        for _ in 0..3 {
            executor.block_on(runtime.handle(&module, post(&body), "warm-up"))?;
        }
        let served = crate::memory::resident_bytes()?.saturating_sub(before);
        report.insert("resident_serving_bytes".into(), served.into());
        contenders.push(Contender { name, runtime, module, report });
    }

    let embed = |contender: &Contender, body: &[u8]| -> anyhow::Result<(u16, Vec<u8>)> {
        let answer = executor.block_on(contender.runtime.handle(&contender.module, post(body), "bench"));
        match answer {
            Ok(response) => Ok((response.status, response.body)),
            Err(error) => Ok((mantle::server::status::of_guest(&error).as_u16(), Vec::new())),
        }
    };
    let mut request_ms = vec![Vec::with_capacity(runs); contenders.len()];
    let mut refuse_ms = vec![Vec::with_capacity(runs); contenders.len()];
    let mut reference: Option<Vec<f64>> = None;
    for round in 0..runs + 3 {
        for (i, contender) in contenders.iter().enumerate() {
            let started = Instant::now();
            let (status, answer) = embed(contender, &body)?;
            let took = started.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(status == 200, "{}: status {status}", contender.name);
            let embedding = embedding(&answer).with_context(|| contender.name.clone())?;
            match &reference {
                None => reference = Some(embedding),
                Some(expected) => {
                    let worst = expected.iter().zip(&embedding).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                    anyhow::ensure!(worst <= 1e-6, "{}: {worst} from the Rust embedding", contender.name);
                }
            }
            let started = Instant::now();
            let (status, _) = embed(contender, b"")?;
            let refused = started.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(status == 400, "{}: an empty body got {status}", contender.name);
            if round >= 3 {
                request_ms[i].push(took);
                refuse_ms[i].push(refused);
            }
        }
    }
    let mut report = serde_json::Map::new();
    for (i, mut contender) in contenders.into_iter().enumerate() {
        contender.report.insert("request_ms".into(), std::mem::take(&mut request_ms[i]).into());
        contender.report.insert("refuse_ms".into(), std::mem::take(&mut refuse_ms[i]).into());
        report.insert(contender.name, contender.report.into());
    }
    Ok(serde_json::Value::Object(report))
}

fn embedding(answer: &[u8]) -> anyhow::Result<Vec<f64>> {
    let answer: serde_json::Value = serde_json::from_slice(answer)?;
    let values = answer["embedding"].as_array().context("no embedding")?;
    Ok(values.iter().filter_map(serde_json::Value::as_f64).collect())
}

/// Bytes of data segments across the component's core modules: the image
/// its linear memories start from, which each instance maps copy-on-write.
fn data_bytes(wasm: &[u8]) -> anyhow::Result<usize> {
    let mut total = 0;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::DataSection(reader) = payload? {
            for data in reader {
                total += data?.data.len();
            }
        }
    }
    Ok(total)
}
