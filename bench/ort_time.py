"""Times each example model with onnxruntime, as bench/run.py asks.

Usage: ort_time.py MODELS_DIR RUNS THREADS

Inputs follow mantle-bench: batch 1, sequences of 32, zeros, and a sample
rate of 16 kHz where a model takes one. Prints JSON: {model: {"ms": [...]}}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = ["efficientnet-lite0", "minilm-l6", "silero-vad"]
TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
SEQUENCE = 32


def inputs(session):
    feed = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if "batch" in str(d) or d == "N" else SEQUENCE) for d in spec.shape]
        value = np.zeros(shape, dtype=TYPES[spec.type])
        if spec.name == "sr":
            value = np.array(16000, dtype=np.int64).reshape(shape)
        feed[spec.name] = value
    return feed


def main():
    models_dir, runs, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    report = {}
    for model in MODELS:
        session = ort.InferenceSession(str(models_dir / model / "model.onnx"), options, providers=["CPUExecutionProvider"])
        feed = inputs(session)
        session.run(None, feed)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - started) * 1e3)
        report[model] = {"ms": times}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
