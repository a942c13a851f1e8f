//! What dynamic batching can gain at most on this machine: per model, N
//! inferences one at a time on the plan optimized for one row, against
//! one batch of N rows on the plan optimized for N, as a node with
//! `max_batch` makes them.

use crate::BenchedModel;
use anyhow::Context;
use mantle::examples::EXAMPLES;
use mantle::models::{HostTensor, LoadOptions, Model};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

const SIZES: [usize; 3] = [2, 4, 8];
const ROUNDS: usize = 15;

pub fn measure(
    models_dir: &Path,
    shapes: &BTreeMap<String, BenchedModel>,
    models: &[String],
) -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::Map::new();
    for name in models {
        let benched = shapes.get(name).with_context(|| format!("{name}: no shapes in the shapes file"))?;
        let example = EXAMPLES
            .iter()
            .find(|example| example.model == name)
            .with_context(|| format!("{name}: no example prepares it"))?;
        let options = example.load_options();
        let dimension = options
            .pinned_dims
            .iter()
            .find(|(_, size)| **size == 1)
            .map(|(dim, _)| dim.clone())
            .with_context(|| format!("{name}: no dimension is pinned to 1"))?;
        let path = models_dir.join(name).join("model.onnx");
        let one = Model::load(name, &path, &options)?;
        let mut by_size = serde_json::Map::new();
        for size in SIZES {
            let mut pinned_dims = options.pinned_dims.clone();
            pinned_dims.insert(dimension.clone(), size);
            let batch = Model::load(name, &path, &LoadOptions { pinned_dims, batching: None })?;
            let (single, stacked) = (zeros(&one, benched, 1)?, zeros(&batch, benched, size)?);
            for _ in 0..2 {
                one.run(single.clone())?;
                batch.run(stacked.clone())?;
            }
            let (mut alone_ms, mut batch_ms) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
            for _ in 0..ROUNDS {
                let started = Instant::now();
                for _ in 0..size {
                    one.run(single.clone())?;
                }
                alone_ms.push(started.elapsed().as_secs_f64() * 1e3);
                let started = Instant::now();
                batch.run(stacked.clone())?;
                batch_ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            by_size.insert(
                size.to_string(),
                serde_json::json!({ "alone_ms": median(&mut alone_ms), "batch_ms": median(&mut batch_ms) }),
            );
        }
        report.insert(name.clone(), serde_json::Value::Object(by_size));
    }
    Ok(serde_json::Value::Object(report))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Zero inputs of `model`, shaped as `benched` gives with `rows` rows.
fn zeros(model: &Model, benched: &BenchedModel, rows: usize) -> anyhow::Result<Vec<(String, HostTensor)>> {
    model
        .inputs()
        .iter()
        .map(|input| {
            let mut shape = benched
                .inputs
                .get(&input.name)
                .with_context(|| format!("no shape for input `{}`", input.name))?
                .clone();
            if let Some(first) = shape.first_mut() {
                *first = rows;
            }
            let data = vec![0u8; shape.iter().product::<usize>() * input.element_type.size()];
            Ok((input.name.clone(), HostTensor { element_type: input.element_type, shape, data }))
        })
        .collect()
}
