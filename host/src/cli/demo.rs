//! `mantle demo`: the bundled example guests on the bundled sample inputs,
//! run offline, with what each answered and how long it took.

use super::Failure;
use anyhow::Context;
use clap::Args;
use mantle::examples::{self, EXAMPLES};
use mantle::runtime::{GuestModule, Request, Runtime};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

/// Run the three bundled example guests on the sample inputs, offline.
#[derive(Args)]
pub struct DemoArgs {
    /// The models directory, laid out as the repository's `models/`.
    #[arg(long, value_name = "DIR", default_value = "models")]
    models_dir: PathBuf,
}

const SENTENCES: [&str; 3] = ["A cat sits on the mat", "A kitten is resting on a rug", "Quarterly revenue grew by 4%"];

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let dir = &args.models_dir;
    if !dir.join("samples").is_dir() {
        return Err(Failure::Setup(anyhow::anyhow!(
            "no models directory at {}: run from the repository root or pass --models-dir",
            dir.display()
        )));
    }
    let started = Instant::now();
    let node = tokio::task::block_in_place(|| examples::examples_node(dir))?;
    let demo = node.tenant(examples::DEMO_TENANT).context("the examples' node has the demo tenant")?;
    let modules = EXAMPLES
        .iter()
        .map(|example| demo.module(example.name).context("the examples' node serves every example"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = &node.runtime;
    println!("mantle demo: {} example guests and their models loaded in {:.2?}\n", modules.len(), started.elapsed());
    let [image, text, speech] = &modules[..] else {
        unreachable!("EXAMPLES has three entries");
    };

    for sample in ["chelsea.png", "coffee.png"] {
        let answer =
            call(runtime, image, std::fs::read(dir.join("samples").join(sample)).context("reading a sample")?).await?;
        let top: Vec<String> = answer["top"]
            .as_array()
            .into_iter()
            .flatten()
            .take(3)
            .map(|c| format!("{} {:.3}", c["label"].as_str().unwrap_or("?"), c["score"].as_f64().unwrap_or(0.0)))
            .collect();
        println!("  image-classify  {sample:<12} -> {}", top.join(", "));
    }

    let mut embeddings = Vec::new();
    for sentence in SENTENCES {
        let answer = call(runtime, text, sentence.as_bytes().to_vec()).await?;
        let vector: Vec<f64> = answer["embedding"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        embeddings.push(vector);
    }
    for other in 1..SENTENCES.len() {
        let cosine: f64 = embeddings[0].iter().zip(&embeddings[other]).map(|(a, b)| a * b).sum();
        println!("  text-embed      cos({:?}, {:?}) = {cosine:.3}", SENTENCES[0], SENTENCES[other]);
    }

    let answer =
        call(runtime, speech, std::fs::read(dir.join("samples/speech.wav")).context("reading a sample")?).await?;
    println!("  speech-detect   speech.wav   -> {}", answer["segments"]);
    println!("\nEach line is one request through a fresh sandboxed guest instance.");
    Ok(())
}

async fn call(runtime: &Runtime, module: &GuestModule, body: Vec<u8>) -> Result<Value, Failure> {
    let request = Request { method: "POST".into(), path: "/".into(), query: String::new(), headers: Vec::new(), body };
    let started = Instant::now();
    let response =
        runtime.handle(module, request, "demo").await.map_err(|e| Failure::Guest(format!("{}: {e}", module.id())))?;
    tracing::info!(module = %module.id(), elapsed = ?started.elapsed(), "answered {}", response.status);
    serde_json::from_slice(&response.body).map_err(|e| {
        Failure::Guest(format!("{} answered {} with a body that is not JSON: {e}", module.id(), response.status))
    })
}
