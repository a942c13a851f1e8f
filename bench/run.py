#!/usr/bin/env python3
"""mantle's benchmark harness. One command, from the repository root:

    python3 bench/run.py [--profile release|dev] [--runs N]

It builds mantle, installs the alternatives (bench/requirements.txt) into a
virtual environment under target/, measures everything side by side in one
run, prints the tables, and writes them with the method to
docs/BENCHMARKS.md. This machine is shared and noisy: compare figures as
ratios within one report, not across reports.

Measured so far:
  1. raw model time: tract in process (mantle-bench) against onnxruntime
     with one and with two threads, interleaved round by round;
  2. host overhead: a no-op guest over HTTP beside the node's /healthz, and
     a fresh no-op instance per call in process;
  3. cold start: from `mantle serve` starting to all three examples having
     answered, with an empty compiled-code cache and with a warm one.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["efficientnet-lite0", "minilm-l6", "silero-vad"]
SAMPLES = {
    "image-classify": "models/samples/chelsea.png",
    "text-embed": None,
    "speech-detect": "models/samples/speech.wav",
}


def run(command, **kwargs):
    return subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def build(profile):
    run(["cargo", "build", "--profile", profile, "-p", "mantle", "-p", "mantle-bench"])
    directory = "debug" if profile == "dev" else profile
    return ROOT / "target" / directory


def venv():
    """A Python with bench/requirements.txt, made once under target/."""
    requirements = ROOT / "bench" / "requirements.txt"
    home = ROOT / "target" / "bench-venv"
    python = home / "bin" / "python"
    stamp = home / "mantle-requirements.txt"
    wanted = requirements.read_text()
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        run([sys.executable, "-m", "venv", "--clear", str(home)])
        run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)])
        stamp.write_text(wanted)
    return python


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def model_times(binaries, python, runs, rounds):
    """Samples per (runner, model), the runners taking turns each round."""
    runners = {
        "tract (mantle)": [str(binaries / "mantle-bench"), "models", "models", str(runs)],
        "onnxruntime, 1 thread": [str(python), "bench/ort_time.py", "models", str(runs), "1"],
        "onnxruntime, 2 threads": [str(python), "bench/ort_time.py", "models", str(runs), "2"],
    }
    samples = {(runner, model): [] for runner in runners for model in MODELS}
    for round_ in range(rounds):
        for runner, command in runners.items():
            print(f"  round {round_ + 1}/{rounds}: {runner}", file=sys.stderr)
            report = json.loads(run(command, capture_output=True, text=True).stdout)
            for model in MODELS:
                samples[(runner, model)].extend(report[model]["ms"])
    return runners, samples


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", path, body=body)
    response = connection.getresponse()
    response.read()
    return response.status


def wait_for_banner(node):
    """The node's address, from the line it prints once it listens."""
    for line in node.stdout:
        if line.startswith("mantle listening on "):
            return line.split()[3]
    raise RuntimeError("the node stopped before it listened")


def host_overhead(binaries, runs):
    """Microseconds per request: the no-op guest over HTTP and /healthz from
    one keep-alive client, and a fresh no-op instance per call in process."""
    noop = ROOT / "target" / "guests" / "wasm32-wasip2" / "release" / "noop.wasm"
    key = "bench-key"
    with tempfile.TemporaryDirectory(prefix="mantle-bench-") as scratch:
        config = Path(scratch) / "node.toml"
        config.write_text(
            "[[tenant]]\n"
            'id = "bench"\n'
            f'key_sha256 = ["{hashlib.sha256(key.encode()).hexdigest()}"]\n'
            "[[tenant.module]]\n"
            'id = "noop"\n'
            f"path = {json.dumps(str(noop))}\n"
        )
        node = subprocess.Popen(
            [str(binaries / "mantle"), "serve", "--config", str(config), "--listen", "127.0.0.1:0",
             "--data-dir", str(Path(scratch) / "data")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            base = wait_for_banner(node)
            command = [str(binaries / "mantle-bench"), "http", base, f"{base}/t/bench/noop", key, str(runs)]
            over_http = json.loads(run(command, capture_output=True, text=True).stdout)
        finally:
            node.terminate()
            node.wait(timeout=30)
    command = [str(binaries / "mantle-bench"), "instantiate", str(runs)]
    in_process = json.loads(run(command, capture_output=True, text=True).stdout)
    return over_http, in_process["us"]


def cold_start(binaries, data_dir):
    """Seconds from spawning `mantle serve` to each example's first answer."""
    port = free_port()
    bodies = {name: (ROOT / path).read_bytes() if path else b"A cat sits on the mat" for name, path in SAMPLES.items()}
    started = time.perf_counter()
    node = subprocess.Popen(
        [str(binaries / "mantle"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answered = {}
        for name, body in bodies.items():
            while True:
                try:
                    if post(port, f"/t/demo/{name}", body) == 200:
                        break
                except OSError:
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError("the node did not answer within 120 s")
                time.sleep(0.002)
            answered[name] = time.perf_counter() - started
        return answered
    finally:
        node.terminate()
        node.wait(timeout=30)


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "-V"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; {rustc}; mantle at {commit or 'unknown'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release", help="cargo profile to build mantle with (default: release)")
    parser.add_argument("--runs", type=int, default=30, help="inferences per model per round (default: 30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every runner, interleaved (default: 3)")
    parser.add_argument("--starts", type=int, default=5, help="warm-cache starts to time (default: 5)")
    parser.add_argument("--requests", type=int, default=5000, help="no-op requests to time (default: 5000)")
    args = parser.parse_args()

    binaries = build(args.profile)
    python = venv()
    ort_version = subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"], capture_output=True, text=True
    ).stdout.strip()

    print("raw model time", file=sys.stderr)
    runners, samples = model_times(binaries, python, args.runs, args.rounds)
    print("host overhead", file=sys.stderr)
    over_http, instantiate = host_overhead(binaries, args.requests)
    print("cold start", file=sys.stderr)
    data_dir = Path(tempfile.mkdtemp(prefix="mantle-bench-"))
    try:
        cold = cold_start(binaries, data_dir)
        warm = [cold_start(binaries, data_dir) for _ in range(args.starts)]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    lines = [
        "# Benchmarks",
        "",
        "Produced by `python3 bench/run.py`; do not edit by hand. Everything below was",
        "measured side by side in one run on a shared, noisy machine: compare figures",
        "as ratios within this report.",
        "",
        f"- Taken: {datetime.date.today().isoformat()}, cargo profile `{args.profile}`.",
        f"- Machine: {machine()}.",
        f"- onnxruntime {ort_version} (the Python wheel, CPU provider).",
        "",
        "## Raw model time",
        "",
        f"One inference, batch 1 (MiniLM: 32 tokens), zero inputs; {args.runs} timed runs per",
        f"model after one warm-up, in {args.rounds} rounds that take turns between the runners.",
        "tract runs each model as the node does: pinned as the examples pin it,",
        "optimized once, on one thread. Milliseconds.",
        "",
        "| model | runner | p50 | p99 | tract ÷ this |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        tract = statistics.median(samples[("tract (mantle)", model)])
        for runner in runners:
            values = samples[(runner, model)]
            p50 = statistics.median(values)
            ratio = "" if runner.startswith("tract") else f"{tract / p50:.2f}×"
            lines.append(f"| {model} | {runner} | {p50:.2f} | {percentile(values, 99):.2f} | {ratio} |")
    lines += [
        "",
        "## Host overhead",
        "",
        f"{args.requests} timed requests after 100 to warm up, each row from one",
        "client over one keep-alive connection (`mantle-bench`, Rust), concurrency 1.",
        "Over HTTP the no-op guest's requests and `/healthz`, which no guest serves,",
        "take turns, so the difference is what a guest adds to a request. In process,",
        "each call makes a fresh instance of the no-op guest and calls its handler, as",
        "the node does per request. Microseconds.",
        "",
        "| what | p50 | p99 |",
        "| --- | --- | --- |",
    ]
    rows = [
        ("no-op guest over HTTP", over_http["noop_us"]),
        ("`/healthz` over HTTP (no guest)", over_http["healthz_us"]),
        ("fresh no-op instance + call, in process", instantiate),
    ]
    for what, values in rows:
        lines.append(f"| {what} | {statistics.median(values):.1f} | {percentile(values, 99):.1f} |")
    names = list(SAMPLES)
    lines += [
        "",
        "## Cold start",
        "",
        "From spawning `mantle serve` (no configuration: the three examples) to each",
        "example's first 200, requests sent one after another as soon as the port",
        "accepts. The first start has an empty data directory, so it compiles the",
        f"guests and fills the compiled-code cache; the next {args.starts} reuse it. Seconds.",
        "",
        "| start | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
        "| empty cache | " + " | ".join(f"{cold[n]:.3f}" for n in names) + " |",
        "| warm cache, median | " + " | ".join(f"{statistics.median(w[n] for w in warm):.3f}" for n in names) + " |",
        "| warm cache, best | " + " | ".join(f"{min(w[n] for w in warm):.3f}" for n in names) + " |",
        "",
    ]
    report = "\n".join(lines)
    (ROOT / "docs" / "BENCHMARKS.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
