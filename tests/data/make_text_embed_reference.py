"""Reference embeddings for the text-embed guest, computed outside mantle.

Token ids come from the Hugging Face `tokenizers` library reading the same
tokenizer.json the guest embeds (padding off, as the guest does); the model
runs in onnxruntime on the same ONNX file; pooling is the sentence-transformers
recipe (mean over the attention mask, then L2 normalisation).

    pip install onnxruntime==1.31.1 tokenizers==0.23.3 numpy
    python3 tests/data/make_text_embed_reference.py > tests/data/text_embed_reference.json
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime
import tokenizers

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models/minilm-l6"
SENTENCES = [
    "A cat sits on the mat",
    "A kitten is resting on a rug",
    "Quarterly revenue grew by 4%",
    "Édith Piaf chantait « La Vie en rose » à l'Olympia — 1956!",
]


def main():
    tokenizer = tokenizers.Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tokenizer.no_padding()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(MODEL / "model.onnx"), options)
    references = []
    for text in SENTENCES:
        encoding = tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        types = np.array([encoding.type_ids], dtype=np.int64)
        (hidden,) = session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        weights = mask[0].astype(np.float32)[:, None]
        pooled = (hidden[0] * weights).sum(axis=0) / max(weights.sum(), 1e-9)
        embedding = pooled / max(np.linalg.norm(pooled), 1e-12)
        references.append(
            {"text": text, "token_ids": encoding.ids, "embedding": [float(x) for x in embedding]}
        )
    json.dump(
        {
            "made_by": "tests/data/make_text_embed_reference.py",
            "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__,
            "references": references,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
