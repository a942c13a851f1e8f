//! Dynamic batching: concurrent runs of a model configured with
//! `max_batch` are stacked into one, through KServe's path and a guest's.
//! Each caller gets its own row: the same bytes whatever batch it lands
//! in, at whatever row, beside whichever neighbours, and the answer of an
//! unbatched run to within the rounding of a plan optimized for another
//! batch size.

use mantle::examples::{self, DEMO_TENANT};
use mantle::manifest::node::NodeConfig;
use mantle::models::{ElementType, HostTensor, Model};
use mantle::node::{BuildOptions, Node};
use mantle_tests::served::{example_module, model_tables, tenant};
use mantle_tests::{node, post, repo_root};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const MODEL: &str = "efficientnet-lite0";

/// A node with one inference thread, so that concurrent runs queue, and
/// EfficientNet batched up to `max_batch` rows with a queue delay long
/// enough for every test caller to join.
fn batching_node(max_batch: usize) -> Node {
    let models = model_tables(&[MODEL])
        .replace("pin = {", &format!("max_batch = {max_batch}\nmax_queue_delay_us = 200000\npin = {{"));
    let tenant = tenant(
        DEMO_TENANT,
        "mk_batching_0123456789abcdef",
        &[MODEL],
        &example_module("image-classify", "image-classify", &[MODEL]),
    );
    let config = format!("[node]\ninference_threads = 1\n\n{models}{tenant}");
    let config = NodeConfig::parse(&config, repo_root()).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let builtin_guests = examples::builtin_guests();
    let options = BuildOptions { data_dir: None, compile_with: None, builtin_guests: &builtin_guests };
    Node::build(&config, &options).unwrap_or_else(|e| panic!("{e}"))
}

/// A distinct input for each `seed`: a smooth pattern, so that the model's
/// answers differ from one seed to the next.
fn input(seed: usize) -> Vec<(String, HostTensor)> {
    let values: Vec<f32> =
        (0..3 * 224 * 224).map(|i| (i as f32 * 0.001 * (seed + 1) as f32).sin() * 2.0 - seed as f32 * 0.1).collect();
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    vec![("input".to_owned(), HostTensor { element_type: ElementType::F32, shape: vec![1, 3, 224, 224], data })]
}

/// Runs `seeds` concurrently through `node`'s KServe path, spawned in that
/// order; each one's output bytes, by seed.
async fn infer_all(node: &Arc<Node>, model: &Arc<Model>, seeds: &[usize]) -> BTreeMap<usize, Vec<u8>> {
    let calls = seeds.iter().map(|&seed| {
        let (node, model) = (Arc::clone(node), Arc::clone(model));
        tokio::spawn(async move {
            let outputs = node.runtime.infer(DEMO_TENANT, &model, input(seed), Duration::from_secs(60)).await;
            let mut outputs = outputs.unwrap_or_else(|e| panic!("caller {seed}: {e}"));
            assert_eq!(outputs.len(), 1, "one output, the logits");
            let (_, logits) = outputs.remove(0);
            assert_eq!(logits.shape, [1, 1000], "caller {seed}: one row, its own");
            (seed, logits.data)
        })
    });
    futures_join(calls).await.into_iter().collect()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inferences_are_batched_and_each_caller_gets_its_own_rows() {
    let batching = Arc::new(batching_node(4));
    let demo = batching.tenant(DEMO_TENANT).expect("the tenant");
    let model = Arc::clone(&demo.model(MODEL, None).expect("the model").model);

    // Six callers: batches of up to four. Then the same six in the other
    // order, which puts each in another batch, at another row, beside
    // other neighbours.
    let seeds: Vec<usize> = (0..6).collect();
    let first = infer_all(&batching, &model, &seeds).await;
    let reversed: Vec<usize> = seeds.iter().rev().copied().collect();
    let second = infer_all(&batching, &model, &reversed).await;
    let stats = model.batch_stats().expect("the model batches");
    assert!(stats.batches >= 2 && stats.rows >= 4, "batches did not form: {stats:?}");

    let alone = node().model(MODEL);
    for seed in seeds {
        assert!(first[&seed] == second[&seed], "caller {seed}'s bytes depend on its batch");
        // Alone, the model runs on the plan optimized for one row, whose
        // kernels round differently from the batch plan's.
        let expected = alone.run(input(seed)).expect("an unbatched run").remove(0).1;
        let (got, want) = (floats(&first[&seed]), floats(&expected.data));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-3, "caller {seed}: its logits differ from its unbatched run by up to {worst}");
        let top = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        assert_eq!(top(&got), top(&want), "caller {seed}");
        // Each seed's answer is its own: no other seed's is that close.
        for (other, bytes) in &first {
            if *other != seed {
                let theirs = floats(bytes);
                let apart = theirs.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(apart > 1e-2, "callers {seed} and {other} got answers too alike to tell apart");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_who_joined_a_batch_whose_first_caller_gave_up_are_answered_all_the_same() {
    let batching = Arc::new(batching_node(4));
    let demo = batching.tenant(DEMO_TENANT).expect("the tenant");
    let model = Arc::clone(&demo.model(MODEL, None).expect("the model").model);
    // The first caller opens a batch and waits up to 200 ms for it to
    // fill; it gives up after 50, once two others have joined.
    let impatient = {
        let (batching, model) = (Arc::clone(&batching), Arc::clone(&model));
        tokio::spawn(async move {
            let infer = batching.runtime.infer(DEMO_TENANT, &model, input(0), Duration::from_secs(60));
            tokio::time::timeout(Duration::from_millis(50), infer).await.is_err()
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let joined = infer_all(&batching, &model, &[1, 2]).await;
    assert!(impatient.await.expect("the task"), "the first caller gave up");
    // They ran alone: their batch closed when its first caller left.
    assert_eq!(model.batch_stats().expect("the model batches").batches, 0);
    let alone = node().model(MODEL);
    for (seed, bytes) in joined {
        let expected = alone.run(input(seed)).expect("an unbatched run").remove(0).1;
        let worst =
            floats(&bytes).iter().zip(&floats(&expected.data)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-3, "caller {seed}: off by {worst}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_calling_a_batched_model_answer_as_they_would_alone() {
    let batching = Arc::new(batching_node(8));
    let demo = batching.tenant(DEMO_TENANT).expect("the tenant");
    let module = demo.module("image-classify").expect("the example");
    let samples: Vec<Vec<u8>> = ["chelsea.png", "coffee.png"]
        .iter()
        .map(|file| std::fs::read(repo_root().join("models/samples").join(file)).expect("a sample"))
        .collect();
    let fixture = node();
    let mut expected = Vec::new();
    for sample in &samples {
        let answer = fixture.call(fixture.example("image-classify"), post(sample.clone())).await.expect("alone");
        expected.push(answer.body);
    }
    let calls = (0..6).map(|i| {
        let (batching, module, body) = (Arc::clone(&batching), Arc::clone(&module), samples[i % 2].clone());
        tokio::spawn(async move { batching.runtime.handle(&module, post(body), "batched").await })
    });
    for (i, answer) in futures_join(calls).await.into_iter().enumerate() {
        let answer = answer.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(answer.status, 200);
        let (got, want) = (top_five(&answer.body), top_five(&expected[i % 2]));
        let labels = |top: &[(String, f64)]| top.iter().map(|(label, _)| label.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&got), labels(&want), "request {i} got another picture's answer");
        for ((label, a), (_, b)) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5, "request {i}: {label} scored {a}, alone {b}");
        }
    }
    let model = demo.model(MODEL, None).expect("the model");
    let stats = model.model.batch_stats().expect("the model batches");
    assert!(stats.batches >= 1, "no batch formed: {stats:?}");
}

#[test]
fn a_model_that_cannot_batch_is_refused_with_the_reason() {
    let models = model_tables(&["silero-vad"]).replace("[[model]]\n", "[[model]]\nmax_batch = 4\n");
    let config = NodeConfig::parse(&models, repo_root()).expect("the configuration parses");
    let builtin_guests = examples::builtin_guests();
    let options = BuildOptions { data_dir: None, compile_with: None, builtin_guests: &builtin_guests };
    let error = Node::build(&config, &options).err().expect("refused").to_string();
    assert!(error.contains("cannot batch it (max_batch = 4)"), "{error}");

    let zero = model_tables(&[MODEL]).replace("[[model]]\n", "[[model]]\nmax_batch = 0\n");
    let error = NodeConfig::parse(&zero, repo_root()).expect_err("refused");
    assert!(error.contains("max_batch must be from 1 to 64"), "{error}");
}

/// The labels and scores of an image-classify answer.
fn top_five(body: &[u8]) -> Vec<(String, f64)> {
    let answer: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    let top = answer["top"].as_array().expect("the top five");
    top.iter()
        .map(|c| (c["label"].as_str().unwrap_or_default().to_owned(), c["score"].as_f64().unwrap_or(-1.0)))
        .collect()
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        results.push(task.await.expect("the task"));
    }
    results
}
