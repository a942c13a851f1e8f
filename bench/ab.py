#!/usr/bin/env python3
"""Two builds of mantle side by side on the request path. From the
repository root, with each directory holding the `mantle` and
`mantle-bench` of one build (a `target/release` of each commit):

    python3 bench/ab.py BEFORE_DIR AFTER_DIR [--rounds N] [--seconds S]

Both builds serve at once and take turns, round by round:
  1. host overhead: the no-op guest over HTTP and /healthz from one
     keep-alive client (`mantle-bench http`), microseconds;
  2. serving: image-classify on the demo node under wrk at concurrency
     1, 2 and 8, requests/s and latency.
It prints the median of each over the rounds and after ÷ before. This
machine is shared and noisy: only ratios within one run mean anything.
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402  (the benchmark harness's helpers)

ROOT = harness.ROOT
CONCURRENCY = [1, 2, 8]


def serve(binary, args, scratch):
    node = subprocess.Popen(
        [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(scratch), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return node, harness.wait_for_banner(node)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    builds = {"before": args.before, "after": args.after}
    wrk = harness.wrk()
    sample = ROOT / harness.SAMPLES["image-classify"]
    noop = ROOT / "target" / "guests" / "wasm32-wasip2" / "release" / "noop.wasm"
    key = "bench-key"
    results = {name: {"noop": [], "healthz": [], **{c: [] for c in CONCURRENCY}} for name in builds}
    nodes = []
    with tempfile.TemporaryDirectory(prefix="mantle-ab-") as scratch:
        scratch = Path(scratch)
        script = scratch / "post.lua"
        script.write_text(harness.WRK_SCRIPT)
        config = scratch / "node.toml"
        config.write_text(
            f'[[tenant]]\nid = "bench"\nkey_sha256 = ["{hashlib.sha256(key.encode()).hexdigest()}"]\n'
            f'[[tenant.module]]\nid = "noop"\npath = {json.dumps(str(noop))}\n'
        )
        try:
            bases = {}
            for name, directory in builds.items():
                overhead = serve(directory / "mantle", ["--config", str(config)], scratch / f"{name}-noop")
                demo = serve(directory / "mantle", [], scratch / f"{name}-demo")
                nodes += [overhead[0], demo[0]]
                bases[name] = (overhead[1], demo[1])
            for name, (_, demo) in bases.items():
                harness.load(wrk, script, f"{demo}/t/demo/image-classify", sample, 8, 2)  # warm-up
            for round_ in range(args.rounds):
                for name, (overhead, demo) in bases.items():
                    print(f"  round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr)
                    bench = builds[name] / "mantle-bench"
                    command = [str(bench), "http", overhead, f"{overhead}/t/bench/noop", key, str(args.requests)]
                    report = json.loads(harness.run(command, capture_output=True, text=True).stdout)
                    results[name]["noop"].append(statistics.median(report["noop_us"]))
                    results[name]["healthz"].append(statistics.median(report["healthz_us"]))
                    for c in CONCURRENCY:
                        url = f"{demo}/t/demo/image-classify"
                        results[name][c].append(harness.load(wrk, script, url, sample, c, args.seconds))
        finally:
            for node in nodes:
                node.terminate()
                node.wait(timeout=30)

    median = statistics.median
    print(f"\n{harness.machine()}; {args.rounds} rounds, medians\n")
    print("| what | before | after | after ÷ before |")
    print("| --- | --- | --- | --- |")
    for what, label in [("noop", "no-op guest over HTTP, p50 µs"), ("healthz", "`/healthz` over HTTP, p50 µs")]:
        before, after = median(results["before"][what]), median(results["after"][what])
        print(f"| {label} | {before:.1f} | {after:.1f} | {after / before:.3f} |")
    for c in CONCURRENCY:
        for field, label in [("rps", "req/s"), ("p50", "p50 ms"), ("p99", "p99 ms")]:
            before = median(run[field] for run in results["before"][c])
            after = median(run[field] for run in results["after"][c])
            print(f"| image-classify c={c}, {label} | {before:.1f} | {after:.1f} | {after / before:.3f} |")
    failed = {name: sum(run["failed"] for c in CONCURRENCY for run in results[name][c]) for name in builds}
    print(f"\nResponses other than 200: before {failed['before']}, after {failed['after']}.")


if __name__ == "__main__":
    main()
