//! `mantle-bench`: the measurements `bench/run.py` takes inside Rust, each
//! printed as JSON for the harness to set beside the alternatives.
//!
//! - `models`: each example model in process, as the node runs it (tract,
//!   pinned as the examples pin it, one thread);
//! - `instantiate`: a fresh instance of the no-op guest per call, as the
//!   node makes one per request;
//! - `http`: requests over one keep-alive connection to a running node.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mantle::examples::{EXAMPLES, load_models};
use mantle::models::{Dim, ElementType, HostTensor, Model};
use mantle::runtime::{ModuleSpec, Request, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::time::Instant;

/// The no-op guest's component, built by build.rs.
mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The length a free sequence dimension gets.
const SEQUENCE: usize = 32;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    measure: Measure,
}

#[derive(Subcommand)]
enum Measure {
    /// Milliseconds per inference of each example model.
    Models { models_dir: PathBuf, runs: usize },
    /// Microseconds to instantiate the no-op guest and call its handler.
    Instantiate { runs: usize },
    /// Microseconds per request: the no-op guest at `url`, and the node's
    /// `/healthz`, which no guest serves, taking turns.
    Http { node: String, url: String, key: String, runs: usize },
}

fn main() -> anyhow::Result<()> {
    let report = match Cli::parse().measure {
        Measure::Models { models_dir, runs } => models(&models_dir, runs)?,
        Measure::Instantiate { runs } => instantiate(runs)?,
        Measure::Http { node, url, key, runs } => http(&node, &url, &key, runs)?,
    };
    println!("{report}");
    Ok(())
}

fn models(models_dir: &std::path::Path, runs: usize) -> anyhow::Result<serde_json::Value> {
    let registry = load_models(models_dir)?;
    let mut report = serde_json::Map::new();
    for example in &EXAMPLES {
        let model = registry.get(example.model).with_context(|| format!("model {}", example.model))?;
        let times = time_model(model, runs)?;
        report.insert(example.model.to_owned(), serde_json::json!({ "ms": times }));
    }
    Ok(serde_json::Value::Object(report))
}

/// Milliseconds of each of `runs` inferences, after one to warm up.
fn time_model(model: &Model, runs: usize) -> anyhow::Result<Vec<f64>> {
    let inputs = bench_inputs(model);
    model.run(inputs.clone())?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        model.run(inputs.clone())?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// Inputs of the model's declared shapes: batch 1, sequences of 32, zeros,
/// and a sample rate of 16 kHz where a model takes one (`bench/ort_time.py`
/// builds the same for onnxruntime).
fn bench_inputs(model: &Model) -> Vec<(String, HostTensor)> {
    model
        .inputs()
        .iter()
        .map(|input| {
            let shape: Vec<usize> = input
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Symbol(s) if s.contains("batch") || s == "N" => 1,
                    Dim::Symbol(_) => SEQUENCE,
                })
                .collect();
            let elements: usize = shape.iter().product();
            let size = input.element_type.size();
            let mut data = vec![0u8; elements * size];
            if input.name == "sr" && input.element_type == ElementType::I64 {
                data.copy_from_slice(&16_000i64.to_le_bytes()[..elements * size]);
            }
            (input.name.clone(), HostTensor { element_type: input.element_type, shape, data })
        })
        .collect()
}

/// Microseconds per request through a fresh no-op instance, in process: the
/// node's per-request cost of a guest, without HTTP.
fn instantiate(runs: usize) -> anyhow::Result<serde_json::Value> {
    let runtime = Runtime::new(&RuntimeConfig::default())?;
    let wasm = std::fs::read(guests::NOOP).with_context(|| format!("reading {}", guests::NOOP))?;
    let spec = ModuleSpec {
        id: "noop".to_owned(),
        tenant: "bench".to_owned(),
        grants: Default::default(),
        limits: Default::default(),
        config: Default::default(),
    };
    let module = runtime.load_module(spec, &wasm)?;
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

/// Microseconds per request over one keep-alive connection, the no-op guest
/// and `/healthz` taking turns, after 100 of each to warm up.
fn http(node: &str, url: &str, key: &str, runs: usize) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(true).build().into();
    let healthz = format!("{}/healthz", node.trim_end_matches('/'));
    let authorization = format!("Bearer {key}");
    let mut noop = Vec::with_capacity(runs);
    let mut health = Vec::with_capacity(runs);
    for round in 0..runs + 100 {
        let started = Instant::now();
        agent
            .post(url)
            .header("authorization", &authorization)
            .send(&[][..])
            .with_context(|| format!("POST {url}"))?
            .body_mut()
            .read_to_vec()?;
        let guest = started.elapsed();
        let started = Instant::now();
        agent.get(&healthz).call().with_context(|| format!("GET {healthz}"))?.body_mut().read_to_vec()?;
        let host = started.elapsed();
        if round >= 100 {
            noop.push(guest.as_secs_f64() * 1e6);
            health.push(host.as_secs_f64() * 1e6);
        }
    }
    Ok(serde_json::json!({ "noop_us": noop, "healthz_us": health }))
}
