"""Embeds text: WordPiece tokenization in Python, `minilm-l6` through
wasi:nn, mean pooling over the attention mask, then L2 normalization, as
sentence-transformers does for all-MiniLM-L6-v2. The same answer as the
Rust text-embed example.

Build, from the repository root:
    componentize-py -d wit -w guest componentize app \\
        -p guest/python/examples/text-embed -p guest/python -p models/minilm-l6 \\
        -o text-embed-py.wasm
"""

import math
import operator
from array import array

import mantle_guest as mg
from wordpiece import WordPiece, is_blank

MODEL = "minilm-l6"
DIM = 384

# Built once, at build time: every request starts from a memory that has it.
TOKENIZER = WordPiece(mg.build_file("vocab.txt").decode("utf-8"))


def handle(request: mg.Request) -> dict:
    text = request.text()
    if is_blank(text):
        raise mg.InvalidInput("the body is empty: send the text to embed as UTF-8")
    ids = TOKENIZER.encode(text)
    shape = [1, len(ids)]
    outputs = mg.Model.load(MODEL).run({
        "input_ids": mg.Tensor(shape, array("q", ids)),
        "attention_mask": mg.Tensor(shape, array("q", [1] * len(ids))),
        "token_type_ids": mg.Tensor(shape, array("q", [0] * len(ids))),
    })
    hidden = outputs["last_hidden_state"].to_array()
    if len(hidden) != len(ids) * DIM:
        raise mg.Internal(f"`{MODEL}` returned {len(hidden)} values for {len(ids)} tokens of {DIM}")
    # Every token is attended to: the mean is over all of them.
    sums = [0.0] * DIM
    for start in range(0, len(hidden), DIM):
        sums = list(map(operator.add, sums, hidden[start:start + DIM]))
    mean = [s / len(ids) for s in sums]
    norm = max(math.sqrt(math.fsum(x * x for x in mean)), 1e-12)
    return {"dim": DIM, "embedding": [x / norm for x in mean]}


Handler = mg.handler(handle)
