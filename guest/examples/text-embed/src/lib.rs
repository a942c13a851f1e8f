//! Embeds text: WordPiece tokenisation, `minilm-l6`, mean pooling over the
//! attention mask, then L2 normalisation, as sentence-transformers does for
//! all-MiniLM-L6-v2.

use mantle_guest::{Error, Model, Request, Response, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;

const MODEL: &str = "minilm-l6";
const DIM: usize = 384;
/// The model's own tokenizer. Its padding is switched off below: pooling
/// over the mask makes padding useless, and shorter inputs run faster.
const TOKENIZER: &[u8] = include_bytes!("../../../../models/minilm-l6/tokenizer.json");

#[derive(Serialize)]
struct Answer {
    dim: usize,
    embedding: Vec<f32>,
}

pub fn handle(request: Request) -> Result<Response, Error> {
    let text = request.text()?;
    if text.trim().is_empty() {
        return Err(Error::invalid_input("the body is empty: send the text to embed as UTF-8"));
    }
    let mut tokenizer = Tokenizer::from_bytes(TOKENIZER)
        .map_err(|e| Error::internal(format!("the bundled tokenizer is corrupt: {e}")))?;
    tokenizer.with_padding(None);
    let encoding =
        tokenizer.encode(text, true).map_err(|e| Error::invalid_input(format!("cannot tokenise the text: {e}")))?;

    let widen = |ids: &[u32]| ids.iter().map(|&id| i64::from(id)).collect::<Vec<i64>>();
    let mask = widen(encoding.get_attention_mask());
    let shape = [1, mask.len() as u32];
    let outputs = Model::load(MODEL)?.run([
        ("input_ids", Tensor::from_slice(&shape, &widen(encoding.get_ids()))),
        ("attention_mask", Tensor::from_slice(&shape, &mask)),
        ("token_type_ids", Tensor::from_slice(&shape, &widen(encoding.get_type_ids()))),
    ])?;
    let hidden = outputs.get("last_hidden_state")?.to_vec::<f32>()?;
    if hidden.len() != mask.len() * DIM {
        return Err(Error::internal(format!(
            "`{MODEL}` returned {} values for {} tokens of {DIM}",
            hidden.len(),
            mask.len()
        )));
    }
    Response::json(&Answer { dim: DIM, embedding: normalize(mean_pool(&hidden, &mask)) })
}

/// Averages the token vectors whose mask is 1.
fn mean_pool(hidden: &[f32], mask: &[i64]) -> Vec<f32> {
    let mut sum = vec![0.0f32; DIM];
    let mut count = 0.0f32;
    for (token, &m) in hidden.chunks_exact(DIM).zip(mask) {
        if m != 0 {
            sum.iter_mut().zip(token).for_each(|(s, &x)| *s += x);
            count += 1.0;
        }
    }
    let count = count.max(1e-9);
    sum.into_iter().map(|s| s / count).collect()
}

fn normalize(vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    vector.into_iter().map(|x| x / norm).collect()
}

mantle_guest::handler!(handle);
