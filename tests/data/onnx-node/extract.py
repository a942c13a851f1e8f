"""Takes ONNX node conformance tests from the `onnx` wheel and writes their
tensors as JSON (`cases.json`) for mantle's tests, read by onnx's own
`numpy_helper`, so that expected values come from outside mantle.

    pip install onnx numpy
    python3 tests/data/onnx-node/extract.py

Source: onnx==1.17.0 : onnx/backend/test/data/node/<test>/ (Apache-2.0).
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from onnx import TensorProto, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
TESTS = ["test_max_float16", "test_max_float32", "test_max_float64", "test_max_uint8", "test_max_int32", "test_max_int64"]
WASI_NN_TYPES = {
    np.dtype("float16"): "FP16",
    np.dtype("float32"): "FP32",
    np.dtype("float64"): "FP64",
    np.dtype("uint8"): "U8",
    np.dtype("int32"): "I32",
    np.dtype("int64"): "I64",
}


def tensor(path, name):
    proto = TensorProto()
    proto.ParseFromString(path.read_bytes())
    array = numpy_helper.to_array(proto)
    return {
        "name": proto.name or name,
        "type": WASI_NN_TYPES[array.dtype],
        "dims": list(array.shape),
        "data_hex": array.astype(array.dtype.newbyteorder("<")).tobytes().hex(),
    }


def main():
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", "-d", scratch, "onnx==1.17.0"],
            check=True,
        )
        (wheel,) = pathlib.Path(scratch).glob("onnx-1.17.0-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                for test in TESTS:
                    prefix = f"onnx/backend/test/data/node/{test}/"
                    if member.startswith(prefix) and not member.endswith("/"):
                        target = HERE / test / member[len(prefix):]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
    cases = []
    for test in TESTS:
        data = HERE / test / "test_data_set_0"
        cases.append({
            "test": test,
            "inputs": [tensor(p, f"input_{i}") for i, p in enumerate(sorted(data.glob("input_*.pb")))],
            "outputs": [tensor(p, f"output_{i}") for i, p in enumerate(sorted(data.glob("output_*.pb")))],
        })
    (HERE / "cases.json").write_text(json.dumps({"source": "onnx==1.17.0", "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
