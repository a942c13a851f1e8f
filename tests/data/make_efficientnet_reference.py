"""Reference class probabilities of EfficientNet-Lite0, computed outside
mantle: onnxruntime (one thread) on the same ONNX file, for an input tensor
both sides generate from the same formula, value i of the [1, 3, 224, 224]
tensor being ((i * 7919) % 255 - 127) / 128.

    pip install onnxruntime==1.32.0 numpy
    python3 tests/data/make_efficientnet_reference.py > tests/data/efficientnet_reference.json
"""

import json
import pathlib

import numpy as np
import onnxruntime

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models/efficientnet-lite0/model.onnx"


def main():
    count = 3 * 224 * 224
    index = np.arange(count, dtype=np.int64)
    image = (((index * 7919) % 255 - 127) / 128).astype(np.float32).reshape(1, 3, 224, 224)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: image})
    logits = logits[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    print(json.dumps({
        "onnxruntime": onnxruntime.__version__,
        "logits": [float(np.float32(x)) for x in logits],
        "probabilities": [float(x) for x in probabilities],
    }))


if __name__ == "__main__":
    main()
