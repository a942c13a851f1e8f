//! The image-classify example on real photos.

use mantle::runtime::{GuestError, HandleError};
use mantle_tests::{http_status, node, post, sample};
use serde_json::Value;

fn labels(answer: &Value) -> Vec<String> {
    answer["top"]
        .as_array()
        .expect("a `top` list")
        .iter()
        .map(|c| c["label"].as_str().expect("a label").to_owned())
        .collect()
}

fn scores(answer: &Value) -> Vec<f64> {
    answer["top"].as_array().expect("a `top` list").iter().map(|c| c["score"].as_f64().expect("a score")).collect()
}

#[tokio::test]
async fn chelsea_is_a_cat() {
    let node = node();
    let answer = node.call_json(node.example("image-classify"), post(sample("chelsea.png"))).await;
    let labels = labels(&answer);
    assert_eq!(labels.len(), 5, "{answer}");
    let mut top3: Vec<&str> = labels[..3].iter().map(String::as_str).collect();
    top3.sort();
    assert_eq!(top3, ["Egyptian cat", "tabby", "tiger cat"], "{answer}");
    let scores = scores(&answer);
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scores are sorted: {scores:?}");
    assert!(scores.iter().sum::<f64>() <= 1.0 + 1e-5, "softmax probabilities: {scores:?}");
    assert_eq!(answer["top"][0]["index"].as_u64().map(|i| [281, 282, 285].contains(&i)), Some(true));
}

#[tokio::test]
async fn coffee_is_espresso() {
    let node = node();
    let answer = node.call_json(node.example("image-classify"), post(sample("coffee.png"))).await;
    assert_eq!(labels(&answer)[0], "espresso", "{answer}");
    assert!(scores(&answer)[0] > 0.9, "{answer}");
}

#[tokio::test]
async fn a_jpeg_is_classified_too() {
    let node = node();
    let answer = node.call_json(node.example("image-classify"), post(sample("chelsea.jpg"))).await;
    assert!(["tiger cat", "tabby", "Egyptian cat"].contains(&labels(&answer)[0].as_str()), "{answer}");
}

#[tokio::test]
async fn a_truncated_jpeg_is_refused_with_a_reason() {
    let node = node();
    let jpeg = sample("chelsea.jpg");
    let truncated = jpeg[..jpeg.len() / 2].to_vec();
    let error = node.call(node.example("image-classify"), post(truncated)).await.expect_err("refused");
    match &error {
        HandleError::Guest(GuestError::InvalidInput(message)) => {
            assert!(message.contains("truncated"), "the message names the problem: {message}")
        }
        other => panic!("expected an invalid-input answer, not {other:?}"),
    }
    assert_eq!(http_status(&error), 400);
    // The module keeps serving.
    let answer = node.call_json(node.example("image-classify"), post(sample("coffee.png"))).await;
    assert_eq!(labels(&answer)[0], "espresso");
}

#[tokio::test]
async fn a_body_that_is_no_image_is_unsupported_media() {
    let node = node();
    let error =
        node.call(node.example("image-classify"), post(b"GIF89a not really".to_vec())).await.expect_err("refused");
    assert_eq!(http_status(&error), 415, "{error}");
    let error = node.call(node.example("image-classify"), post(Vec::new())).await.expect_err("refused");
    assert_eq!(http_status(&error), 400, "{error}");
}

/// Concurrent requests share one loaded model and the inference pool, and
/// each still gets the answer for its own photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_answers() {
    let node = node();
    let photos = [("chelsea.png", "tiger cat"), ("coffee.png", "espresso")];
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (photo, expected) = photos[i % 2];
        requests.spawn(async move {
            let answer = node.call_json(node.example("image-classify"), post(sample(photo))).await;
            (photo, expected, labels(&answer)[0].clone())
        });
    }
    let mut answered = 0;
    while let Some(outcome) = requests.join_next().await {
        let (photo, expected, actual) = outcome.expect("the request task completes");
        assert_eq!(actual, expected, "{photo}");
        answered += 1;
    }
    assert_eq!(answered, 8);
}
