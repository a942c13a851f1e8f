//! `mantle-bench`: times each example model in process, as the node runs it
//! (tract, pinned as the examples pin it, one thread), and prints the
//! figures as JSON for `bench/run.py`, which sets them beside the
//! alternatives.
//!
//! Usage: mantle-bench MODELS_DIR RUNS

use anyhow::Context;
use mantle::examples::{EXAMPLES, load_models};
use mantle::models::{Dim, ElementType, HostTensor, Model};
use std::path::PathBuf;
use std::time::Instant;

/// The length a free sequence dimension gets, as PERF-style runs use.
const SEQUENCE: usize = 32;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let models_dir = PathBuf::from(args.next().context("usage: mantle-bench MODELS_DIR RUNS")?);
    let runs: usize = args.next().context("usage: mantle-bench MODELS_DIR RUNS")?.parse().context("RUNS")?;
    let registry = load_models(&models_dir)?;
    let mut report = serde_json::Map::new();
    for example in &EXAMPLES {
        let model = registry.get(example.model).with_context(|| format!("model {}", example.model))?;
        let times = time(model, runs)?;
        report.insert(example.model.to_owned(), serde_json::json!({ "ms": times }));
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

/// Milliseconds of each of `runs` inferences, after one to warm up.
fn time(model: &Model, runs: usize) -> anyhow::Result<Vec<f64>> {
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
/// and a sample rate of 16 kHz where a model takes one (`bench/run.py`
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
