"""Dynamic batching, on against off: image-classify through its guest and
EfficientNet-Lite0 through KServe (binary tensor extension), under load
from wrk at concurrency 8 and 16, on nodes alike but for the model's
`max_batch` and `max_queue_delay_us`:

- off: `max_batch = 1`, the default;
- on: `max_batch = 8`, no queue delay (a batch gathers while its job waits
  for an inference thread);
- on, 2 ms: `max_batch = 8`, `max_queue_delay_us = 2000`.

All three nodes are up at once and take turns, `--rounds` times; the run
with the median throughput stands. Also, in process, what batching can
gain at most here: N inferences one at a time against one batch of N, on
plans optimized for each (`mantle-bench batch-ceiling`).

    python3 bench/batching.py [--seconds 6] [--rounds 3]

Run alone, it replaces its subsection of this CPU's section of
docs/BENCHMARKS.md; `bench/run.py` runs it as one of its steps.
"""

import argparse
import hashlib
import http.client
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as harness

SUBSECTION = "### Dynamic batching"
MODEL = "efficientnet-lite0"
KEY = "mk_batching_bench_0123456789"
CONCURRENCY = [8, 16]
SETTINGS = {
    "off": "",
    "on": "max_batch = 8\n",
    "on, 2 ms": "max_batch = 8\nmax_queue_delay_us = 2000\n",
}

# As run.py's script, with the tenant's key and, for KServe, the length of
# the JSON header before the binary tensor.
WRK_SCRIPT = harness.WRK_SCRIPT.replace(
    'wrk.headers["Content-Type"] = "application/octet-stream"',
    'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    'wrk.headers["Authorization"] = "Bearer ' + KEY + '"\n'
    'local header_length = os.getenv("MANTLE_BENCH_HEADER_LENGTH")\n'
    'if header_length then wrk.headers["Inference-Header-Content-Length"] = header_length end',
)


def config(batching):
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    return (
        f"[[model]]\nname = \"{MODEL}\"\npath = '{harness.ROOT / 'models' / MODEL / 'model.onnx'}'\n"
        f"pin = {{ N = 1 }}\n{batching}\n"
        f"[[tenant]]\nid = \"bench\"\nkey_sha256 = [\"{key_hash}\"]\ngrants = [\"{MODEL}\"]\n\n"
        f"[[tenant.module]]\nid = \"image-classify\"\nexample = \"image-classify\"\nmodels = [\"{MODEL}\"]\n"
    )


def kserve_body(path):
    """A KServe V2 request for one 224×224 input in the binary tensor
    extension, written to `path`; the JSON header's length. Any input costs
    the model the same: a smooth pattern."""
    count = 3 * 224 * 224
    values = struct.pack(f"<{count}f", *(math.sin(i * 0.001) * 2.0 for i in range(count)))
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(values)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()
    path.write_bytes(header + bytes(values))
    return len(header)


def measure(binaries, seconds, rounds):
    wrk_binary = harness.wrk()
    sample = harness.ROOT / harness.SAMPLES["image-classify"]
    routes = {"image-classify": "/t/bench/image-classify", "KServe": f"/v2/models/{MODEL}/infer"}
    nodes = {}
    with tempfile.TemporaryDirectory(prefix="mantle-bench-") as scratch:
        scratch = Path(scratch)
        script = scratch / "post.lua"
        script.write_text(WRK_SCRIPT)
        tensor = scratch / "kserve.bin"
        header_length = kserve_body(tensor)
        bodies = {"image-classify": (sample, None), "KServe": (tensor, header_length)}
        try:
            for name, batching in SETTINGS.items():
                directory = scratch / name.replace(",", "").replace(" ", "-")
                directory.mkdir()
                (directory / "node.toml").write_text(config(batching))
                port = harness.free_port()
                process = subprocess.Popen(
                    [str(binaries / "mantle"), "serve", "--config", str(directory / "node.toml"), "--listen",
                     f"127.0.0.1:{port}", "--data-dir", str(directory / "data")],
                    cwd=harness.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                nodes[name] = (process, port)
                started = time.perf_counter()
                harness.wait_until(lambda: ready(port), started, 120, f"the node on port {port} was not ready")
            runs = {(name, route, c): [] for name in nodes for route in routes for c in CONCURRENCY}
            for round_ in range(rounds):
                for route, path in routes.items():
                    body, length = bodies[route]
                    for c in CONCURRENCY:
                        for name, (_, port) in nodes.items():
                            print(f"  round {round_ + 1}/{rounds}: {route}, batching {name}, concurrency {c}",
                                  file=sys.stderr)
                            env = None if length is None else {"MANTLE_BENCH_HEADER_LENGTH": str(length)}
                            url = f"http://127.0.0.1:{port}{path}"
                            runs[(name, route, c)].append(harness.load(wrk_binary, script, url, body, c, seconds, env))
        finally:
            for process, _ in nodes.values():
                process.terminate()
                process.wait(timeout=30)
    results = {key: sorted(r, key=lambda run: run["rps"])[len(r) // 2] for key, r in runs.items()}
    command = [str(binaries / "mantle-bench"), "batch-ceiling", "models", str(harness.SHAPES), MODEL, "minilm-l6"]
    ceiling = json.loads(harness.run(command, capture_output=True, text=True).stdout)
    return {"served": results, "ceiling": ceiling}


def ready(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/readyz")
    return connection.getresponse().status == 200


def section(results, seconds, rounds):
    served, ceiling = results["served"], results["ceiling"]
    lines = [
        SUBSECTION,
        "",
        "Three nodes alike but for EfficientNet-Lite0's batching (`bench/batching.py`): off",
        "(`max_batch = 1`, the default); on (`max_batch = 8`, no queue delay: a batch gathers",
        "while its job waits for an inference thread); and on with `max_queue_delay_us = 2000`.",
        "image-classify through its guest, and the model alone through KServe (binary tensor",
        f"extension). `wrk`, one thread, {seconds} s per run; the nodes take turns, {rounds} rounds, and",
        "the run with the median throughput stands. Requests/s, latency in ms; the ratio is",
        "the throughput against batching off.",
        "",
        "| route | concurrency | batching | req/s | p50 | p99 | failed | ÷ off |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for route in ("image-classify", "KServe"):
        for c in CONCURRENCY:
            off = served[("off", route, c)]["rps"]
            for name in SETTINGS:
                r = served[(name, route, c)]
                lines.append(f"| {route} | {c} | {name} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} "
                             f"| {r['failed']} | {r['rps'] / off:.2f}× |")
    lines += [
        "",
        "What batching can gain at most on this CPU: in process, N inferences one at a time on",
        "the plan optimized for one row, against one batch of N on the plan optimized for N",
        "(`mantle-bench batch-ceiling`), median of 15 rounds. Milliseconds.",
        "",
        "| model | N | N alone | one batch of N | batch ÷ alone |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model, sizes in ceiling.items():
        for size, times in sizes.items():
            lines.append(f"| {model} | {size} | {times['alone_ms']:.1f} | {times['batch_ms']:.1f} "
                         f"| {times['batch_ms'] / times['alone_ms']:.2f} |")
    lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binaries = harness.build(args.profile)
    cpu = json.loads(harness.run([str(binaries / "mantle-bench"), "cpu"], capture_output=True, text=True).stdout)
    lines = section(measure(binaries, args.seconds, args.rounds), args.seconds, args.rounds)
    print("\n".join(lines))
    heading = harness.SECTION + cpu["description"].replace("; vector features: ", " (") + ")"
    harness.splice_subsection(heading, SUBSECTION, "bench/batching.py", cpu, args.profile, lines)


if __name__ == "__main__":
    main()
