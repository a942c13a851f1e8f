//! The text-embed example against an onnxruntime reference.

use mantle_tests::{http_status, node, post, repo_root};
use serde_json::Value;

async fn embed(text: &str) -> Vec<f64> {
    let node = node();
    let answer = node.call_json(node.example("text-embed"), post(text.as_bytes().to_vec())).await;
    assert_eq!(answer["dim"], 384);
    answer["embedding"].as_array().expect("an embedding").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test]
async fn similar_sentences_are_closer() {
    let cat = embed("A cat sits on the mat").await;
    let kitten = embed("A kitten is resting on a rug").await;
    let revenue = embed("Quarterly revenue grew by 4%").await;
    let (near, far) = (cosine(&cat, &kitten), cosine(&cat, &revenue));
    assert!(near > far, "cat~kitten {near} should beat cat~revenue {far}");
}

#[tokio::test]
async fn embeddings_are_unit_length() {
    let vector = embed("Edge nodes run models close to the data.").await;
    assert_eq!(vector.len(), 384);
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() <= 1e-4, "norm {norm}");
}

#[tokio::test]
async fn embeddings_match_the_onnxruntime_reference() {
    let path = repo_root().join("tests/data/text_embed_reference.json");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the reference is committed")).expect("JSON");
    let references = reference["references"].as_array().expect("references");
    assert!(references.len() >= 3);
    for case in references {
        let text = case["text"].as_str().expect("text");
        let expected: Vec<f64> =
            case["embedding"].as_array().expect("embedding").iter().filter_map(Value::as_f64).collect();
        let actual = embed(text).await;
        let worst = actual.iter().zip(&expected).map(|(a, e)| (a - e).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-3, "{text:?}: largest difference {worst}");
    }
}

#[tokio::test]
async fn empty_or_invalid_text_is_refused() {
    let node = node();
    let error = node.call(node.example("text-embed"), post(Vec::new())).await.expect_err("refused");
    assert_eq!(http_status(&error), 400, "{error}");
    let error = node.call(node.example("text-embed"), post(vec![0xff, 0xfe, 0x00])).await.expect_err("refused");
    assert_eq!(http_status(&error), 400, "{error}");
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

/// The example builds its tokenizer from the plain vocabulary; it must cut
/// text exactly as the model's own `tokenizer.json` does.
#[test]
fn the_tokenizer_matches_the_models_own() {
    let path = repo_root().join("models/minilm-l6/tokenizer.json");
    let mut reference = tokenizers::Tokenizer::from_file(&path).expect("the model's tokenizer.json");
    reference.with_padding(None);
    let built = text_embed::tokenizer().expect("the example's tokenizer");
    let long = "Edge nodes run models close to the data, ".repeat(30);
    let texts = [
        "A cat sits on the mat",
        "HÉLLO   wörld!!! naïve café — don't, can't; it's 3.14%",
        "東京 and 北京 are cities; 한국어 too",
        "a [MASK] in the middle, [CLS] and [SEP] written out, [UNK]",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "tabs\tand\nnewlines\r\nand \u{200b}zero-width and control \u{7}",
        &long,
    ];
    for text in texts {
        let (ours, theirs) = (built.encode(text, true).expect("encode"), reference.encode(text, true).expect("encode"));
        assert_eq!(ours.get_ids(), theirs.get_ids(), "{text:?}");
        assert_eq!(ours.get_type_ids(), theirs.get_type_ids(), "{text:?}");
        assert_eq!(ours.get_attention_mask(), theirs.get_attention_mask(), "{text:?}");
    }
    assert_eq!(built.encode(long.as_str(), true).expect("encode").len(), 128, "long text is cut at 128 tokens");
}
