// Embeds text: WordPiece tokenization in JavaScript, `minilm-l6` through
// wasi:nn, mean pooling over the attention mask, then L2 normalization, as
// sentence-transformers does for all-MiniLM-L6-v2. The same answer as the
// Rust text-embed example. Build it with build.mjs beside this file.

import * as mg from '../../mantle-guest.js';
import { VOCAB } from './vocab-data.js';
import { WordPiece, isBlank } from './wordpiece.js';

const MODEL = 'minilm-l6';
const DIM = 384;

// Built once, at build time: every request starts from a memory that has it.
const tokenizer = new WordPiece(VOCAB);

function handle(request) {
  const text = request.text();
  if (isBlank(text)) throw new mg.InvalidInput('the body is empty: send the text to embed as UTF-8');
  const ids = tokenizer.encode(text);
  const shape = [1, ids.length];
  const outputs = mg.Model.load(MODEL).run({
    input_ids: new mg.Tensor(shape, BigInt64Array.from(ids, BigInt)),
    attention_mask: new mg.Tensor(shape, new BigInt64Array(ids.length).fill(1n)),
    token_type_ids: new mg.Tensor(shape, new BigInt64Array(ids.length)),
  });
  const hidden = outputs.get('last_hidden_state').toArray();
  if (hidden.length !== ids.length * DIM) {
    throw new mg.Internal(`\`${MODEL}\` returned ${hidden.length} values for ${ids.length} tokens of ${DIM}`);
  }
  // Every token is attended to: the mean is over all of them.
  const mean = new Float64Array(DIM);
  for (let start = 0; start < hidden.length; start += DIM) {
    for (let d = 0; d < DIM; d += 1) mean[d] += hidden[start + d];
  }
  let squares = 0;
  for (let d = 0; d < DIM; d += 1) {
    mean[d] /= ids.length;
    squares += mean[d] * mean[d];
  }
  const norm = Math.max(Math.sqrt(squares), 1e-12);
  return { dim: DIM, embedding: Array.from(mean, (x) => x / norm) };
}

export const handler = mg.handler(handle);
