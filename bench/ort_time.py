"""Times each benchmarked model with onnxruntime, as bench/run.py asks.

Usage: ort_time.py MODELS_DIR SHAPES_JSON RUNS THREADS

Inputs are zeros of the shapes in SHAPES_JSON (bench/models.json), which
mantle-bench reads too. Prints JSON: {model: {"ms": [...]}}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def inputs(session, shapes):
    return {spec.name: np.zeros(shapes[spec.name], dtype=TYPES[spec.type]) for spec in session.get_inputs()}


def main():
    models_dir, runs, threads = Path(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4])
    benched = json.loads(Path(sys.argv[2]).read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    report = {}
    for model, spec in benched.items():
        session = ort.InferenceSession(str(models_dir / model / "model.onnx"), options, providers=["CPUExecutionProvider"])
        feed = inputs(session, spec["inputs"])
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
