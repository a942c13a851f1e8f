//! `mantle-bench`: the measurements `bench/run.py` takes inside Rust, each
//! printed as JSON for the harness to set beside the alternatives.
//!
//! - `models`: each benchmarked model in process, as the node runs it
//!   (tract, pinned as the examples pin it, one thread);
//! - `ops`: where each model's inference time goes, by kind of operation;
//! - `matmuls`: each model's matrix products, with the kernel tract chose
//!   here and the one it would choose on AVX2 and on AVX-512 machines;
//! - `sandbox`: each example in the sandbox against the same handler
//!   compiled natively; `snapshots`: each on a node that pre-initializes
//!   guests against one that does not;
//! - `batch-ceiling`: N inferences alone against one batch of N;
//! - `instantiate`: a fresh instance of the no-op guest per call, as the
//!   node makes one per request;
//! - `http`: requests over one keep-alive connection to a running node;
//! - `cpu`: the CPU, its vector features and the kernel level chosen for it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mantle::examples::EXAMPLES;
use mantle::manifest::module::{ModuleDeclaration, ModuleSource};
use mantle::models::{HostTensor, LoadOptions, Model};
use mantle::node::resolve::{Scope, resolve_module};
use mantle::runtime::{Request, Runtime, RuntimeConfig};
use mantle::types::Id;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod batch_ceiling;
mod http_client;
mod hyper_reference;
mod languages;
mod memory;
mod sandbox;

/// The no-op guest's component, built by build.rs.
mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    measure: Measure,
}

#[derive(Subcommand)]
enum Measure {
    /// Milliseconds per inference of each model in `shapes`
    /// (`bench/models.json`), on zeros of the shapes it gives.
    Models { models_dir: PathBuf, shapes: PathBuf, runs: usize },
    /// Per model in `shapes`, the milliseconds each kind of operation takes
    /// per inference.
    Ops { models_dir: PathBuf, shapes: PathBuf, runs: usize },
    /// Per model in `shapes`, every matrix product in the plan: its sizes,
    /// the kernel tract chose on this machine, and the one it would choose
    /// for the same sizes on an AVX2 and on an AVX-512 machine
    /// (`TRACT_X86_KIND=intel` or `amd` picks the vendor's cost model).
    Matmuls { models_dir: PathBuf, shapes: PathBuf },
    /// Milliseconds per request of each example given as `NAME=BODY_FILE`:
    /// in the sandbox, and its handler compiled natively, taking turns.
    Sandbox {
        models_dir: PathBuf,
        runs: usize,
        #[arg(required = true, value_parser = example_body)]
        bodies: Vec<(String, PathBuf)>,
    },
    /// Milliseconds per request of each example given as `NAME=BODY_FILE`,
    /// in the sandbox: on a node that pre-initializes guests and on one
    /// that does not, taking turns.
    Snapshots {
        models_dir: PathBuf,
        runs: usize,
        #[arg(required = true, value_parser = example_body)]
        bodies: Vec<(String, PathBuf)>,
    },
    /// Per model named, milliseconds for N inferences one at a time
    /// against one batch of N, each on the plan optimized for its size.
    BatchCeiling {
        models_dir: PathBuf,
        shapes: PathBuf,
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// The text-embed pipeline in each language: the Rust example, then
    /// each component given as `NAME=PATH` (the Python and JavaScript
    /// examples): compile time, sizes, resident memory, and milliseconds
    /// per request on the text in `text`, and on an empty body.
    Languages {
        models_dir: PathBuf,
        runs: usize,
        text: PathBuf,
        /// The `mantle` executable the components are compiled with.
        mantle: PathBuf,
        #[arg(value_parser = example_body)]
        components: Vec<(String, PathBuf)>,
    },
    /// Microseconds to instantiate the no-op guest and call its handler.
    Instantiate { runs: usize },
    /// Microseconds per request: the no-op guest at `url`, the node's
    /// `/healthz`, which no guest serves, and the bare hyper server at
    /// `reference` if given, taking turns in blocks.
    Http {
        node: String,
        url: String,
        key: String,
        runs: usize,
        #[arg(long)]
        reference: Option<String>,
    },
    /// The CPU's model and vector features, and the kernel levels it
    /// supports and runs at.
    Cpu,
    /// Serves `ok` to every request with hyper alone, printing its
    /// address: the reference for `http`.
    HyperReference,
    /// Per model in `shapes`, the resident memory it adds as the node
    /// holds it, loaded and after one inference, beside its file's size.
    Memory { models_dir: PathBuf, shapes: PathBuf },
}

/// Each example's name with the body read from its file.
fn read_bodies(bodies: Vec<(String, PathBuf)>) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    bodies
        .into_iter()
        .map(|(name, path)| {
            let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((name, body))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let report = match Cli::parse().measure {
        Measure::Models { models_dir, shapes, runs } => models(&models_dir, &shapes, runs)?,
        Measure::Ops { models_dir, shapes, runs } => ops(&models_dir, &shapes, runs)?,
        Measure::Matmuls { models_dir, shapes } => matmuls(&models_dir, &shapes)?,
        Measure::Sandbox { models_dir, runs, bodies } => sandbox::measure(&models_dir, runs, &read_bodies(bodies)?)?,
        Measure::Snapshots { models_dir, runs, bodies } => {
            sandbox::snapshots(&models_dir, runs, &read_bodies(bodies)?)?
        }
        Measure::BatchCeiling { models_dir, shapes, models } => {
            batch_ceiling::measure(&models_dir, &benched_models(&shapes)?, &models)?
        }
        Measure::Languages { models_dir, runs, text, mantle, components } => {
            languages::measure(&models_dir, runs, &text, &mantle, components)?
        }
        Measure::Instantiate { runs } => instantiate(runs)?,
        Measure::Http { node, url, key, runs, reference } => http(&node, &url, &key, runs, reference.as_deref())?,
        Measure::Cpu => cpu(),
        Measure::HyperReference => hyper_reference::serve()?,
        Measure::Memory { models_dir, shapes } => memory::models(&models_dir, &shapes)?,
    };
    println!("{report}");
    Ok(())
}

/// `NAME=PATH`, an example and the file its request body comes from.
fn example_body(arg: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = arg.split_once('=').ok_or_else(|| format!("`{arg}` is not NAME=BODY_FILE"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn models(models_dir: &Path, shapes: &Path, runs: usize) -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::Map::new();
    for (name, benched) in benched_models(shapes)? {
        let (model, inputs) = load(models_dir, &name, &benched)?;
        model.run(inputs.clone())?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            model.run(inputs.clone())?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        report.insert(name, serde_json::json!({ "ms": times }));
    }
    Ok(serde_json::Value::Object(report))
}

/// Per model, each kind of operation's milliseconds per inference, over
/// `runs` inferences after one to warm up, longest first.
fn ops(models_dir: &Path, shapes: &Path, runs: usize) -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::Map::new();
    for (name, benched) in benched_models(shapes)? {
        let (model, inputs) = load(models_dir, &name, &benched)?;
        model.run(inputs.clone())?;
        let ops = model.profile(inputs, runs)?;
        let ops: Vec<_> = ops
            .iter()
            .map(|op| serde_json::json!({ "op": op.op, "nodes": op.nodes, "ms": op.time.as_secs_f64() * 1e3 }))
            .collect();
        report.insert(name, serde_json::Value::Array(ops));
    }
    Ok(serde_json::Value::Object(report))
}

fn cpu() -> serde_json::Value {
    use mantle::models::kernels::{Level, cpu_description, vector_features};
    let supported: Vec<&str> = Level::ALL.into_iter().filter(|l| l.supported()).map(Level::name).collect();
    serde_json::json!({
        "description": cpu_description(),
        "features": vector_features(),
        "supported": supported,
        "detected": Level::detected().name(),
        "chosen": Level::chosen().name(),
    })
}

/// The x86-64 machines `matmuls` asks tract about, as tract names their
/// instruction sets.
const MACHINES: [(&str, &str); 2] = [("avx2", "avx,avx2,fma,f16c"), ("avx512", "avx,avx2,fma,f16c,avx512f")];

fn matmuls(models_dir: &Path, shapes: &Path) -> anyhow::Result<serde_json::Value> {
    use tract_onnx::prelude::DatumType;
    use tract_onnx::tract_core::tract_linalg::{MmmDispatch, isa::IsaSet};
    let machines = MACHINES
        .iter()
        .map(|(name, set)| {
            let set: IsaSet = set.parse().map_err(|e| anyhow::anyhow!("{set}: {e}"))?;
            Ok((*name, MmmDispatch::for_isa(set)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut report = serde_json::Map::new();
    for (name, benched) in benched_models(shapes)? {
        let (model, _) = load(models_dir, &name, &benched)?;
        let products: Vec<_> = model
            .matmuls()
            .into_iter()
            .map(|product| {
                let picks: serde_json::Map<_, _> = machines
                    .iter()
                    .map(|(machine, dispatch)| {
                        let pick = dispatch.preferred_kernel(DatumType::F32, product.m, product.k, product.n);
                        (machine.to_string(), serde_json::json!(pick.map(|k| k.name().to_owned())))
                    })
                    .collect();
                serde_json::json!({
                    "node": product.node,
                    "m": product.m,
                    "k": product.k,
                    "n": product.n,
                    "kernels": product.kernels,
                    "picks": picks,
                })
            })
            .collect();
        report.insert(name, serde_json::Value::Array(products));
    }
    Ok(serde_json::Value::Object(report))
}

/// A model to time and its inputs' shapes, from `bench/models.json`, which
/// `bench/ort_time.py` reads too.
#[derive(serde::Deserialize)]
pub(crate) struct BenchedModel {
    /// Dimensions fixed at load, for a model no example prepares.
    #[serde(default)]
    pinned: BTreeMap<String, usize>,
    inputs: BTreeMap<String, Vec<usize>>,
}

pub(crate) fn benched_models(shapes: &Path) -> anyhow::Result<BTreeMap<String, BenchedModel>> {
    let text = std::fs::read_to_string(shapes).with_context(|| format!("reading {}", shapes.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", shapes.display()))
}

/// Loads a benchmarked model, prepared as the node prepares it when an
/// example uses it, and zero inputs of the shapes `benched` gives.
pub(crate) fn load(
    models_dir: &Path,
    name: &str,
    benched: &BenchedModel,
) -> anyhow::Result<(Model, Vec<(String, HostTensor)>)> {
    let options = match EXAMPLES.iter().find(|example| example.model == name) {
        Some(example) => example.load_options(),
        None => LoadOptions { pinned_dims: benched.pinned.clone(), batching: None },
    };
    let model = Model::load(name, &models_dir.join(name).join("model.onnx"), &options)?;
    let inputs = model
        .inputs()
        .iter()
        .map(|input| {
            let shape = benched
                .inputs
                .get(&input.name)
                .with_context(|| format!("{name}: no shape for input `{}`", input.name))?;
            let data = vec![0u8; shape.iter().product::<usize>() * input.element_type.size()];
            Ok((input.name.clone(), HostTensor { element_type: input.element_type, shape: shape.clone(), data }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((model, inputs))
}

/// Microseconds per request through a fresh no-op instance, in process: the
/// node's per-request cost of a guest, without HTTP.
fn instantiate(runs: usize) -> anyhow::Result<serde_json::Value> {
    let runtime = Runtime::new(&RuntimeConfig::default())?;
    let declaration = ModuleDeclaration {
        id: Id::new("noop").map_err(anyhow::Error::msg)?,
        source: ModuleSource::File(guests::NOOP.into()),
        models: Vec::new(),
        limits: Default::default(),
        config: Default::default(),
    };
    let scope =
        Scope { tenant: "bench", models: &[], ceiling: None, builtin_guests: &[], bundle: None, compiled_dir: None };
    let module = resolve_module(&runtime, &declaration, &scope)?.module;
    let request = Request {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    let executor = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    executor.block_on(async {
        // Warm up: the first instances touch fresh pool memory.
        for _ in 0..100 {
            runtime.handle(&module, request.clone(), "warm-up").await?;
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            runtime.handle(&module, request.clone(), "bench").await?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(serde_json::json!({ "us": times }))
    })
}

/// Microseconds per request over keep-alive connections, one per server:
/// `/healthz`, the hyper reference and the no-op guest, in blocks of
/// [`BLOCK`] that take turns until each has `runs`, after 100 of each to
/// warm up. Each block's first request is not kept. Taking turns request
/// by request would measure each server in the other's wake: a core still
/// busy with the last answer takes the next request without a halted
/// core's wake-up, so whichever came second looks faster, and a guest
/// request's leftover work (its instance's memory reset) would be charged
/// to the probe after it. The client is `http_client`'s, blocking.
fn http(node: &str, url: &str, key: &str, runs: usize, reference: Option<&str>) -> anyhow::Result<serde_json::Value> {
    const BLOCK: usize = 250;
    let noop_path = url.strip_prefix(node.trim_end_matches('/')).context("the no-op URL is on the node")?;
    let authorization = format!("Bearer {key}");
    let mut to_node = http_client::Connection::open(node)?;
    let mut to_reference = reference.map(http_client::Connection::open).transpose()?;
    for _ in 0..100 {
        to_node.time("GET", "/healthz", None)?;
        to_node.time("POST", noop_path, Some(&authorization))?;
        if let Some(connection) = &mut to_reference {
            connection.time("GET", "/", None)?;
        }
    }
    let (mut noop, mut health, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    while health.len() < runs {
        let block = BLOCK.min(runs - health.len());
        // One more than is kept: the first of a block follows another server's.
        for n in 0..=block {
            let took = to_node.time("GET", "/healthz", None)?;
            health.extend((n > 0).then_some(took));
        }
        if let Some(connection) = &mut to_reference {
            for n in 0..=block {
                let took = connection.time("GET", "/", None)?;
                floor.extend((n > 0).then_some(took));
            }
        }
        for n in 0..=block {
            let took = to_node.time("POST", noop_path, Some(&authorization))?;
            noop.extend((n > 0).then_some(took));
        }
    }
    Ok(serde_json::json!({ "noop_us": noop, "healthz_us": health, "hyper_us": floor }))
}
