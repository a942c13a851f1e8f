#!/usr/bin/env python3
"""mantle's benchmark harness. One command, from the repository root:

    python3 bench/run.py [--profile release|dev] [--runs N] [--only-snapshots]

It builds mantle, installs the alternatives (bench/requirements.txt) into a
virtual environment under target/, measures everything side by side in one
run, prints the tables, and writes them with the method to
docs/BENCHMARKS.md. This machine is shared and noisy: compare figures as
ratios within one report, not across reports.

Measured so far:
  1. raw model time: tract in process (mantle-bench) against onnxruntime
     with one and with two threads, interleaved round by round;
  2. the cost of the sandbox: each example as the node runs it, against
     the same handler compiled natively and calling the same models; and
     each example on a node that pre-initializes guests against one that
     does not (`pre_initialize = false`);
  3. host overhead: a no-op guest over HTTP beside the node's /healthz, and
     a fresh no-op instance per call in process;
  4. serving: image-classify under load from wrk at concurrency 1 to 16,
     against a FastAPI + Pillow + onnxruntime server of the same pipeline,
     and the memory of both, idle and at peak;
  5. cold start: from `mantle serve` starting to all three examples having
     answered, with an empty compiled-code cache and with a warm one;
  6. following a registry tag: from a tag move to the first answer of the
     new version on three nodes, and the registry requests of idle nodes
     (bench/follow.py, which also runs alone);
  7. tenants: start, memory and one tenant's latency under load with 1 to
     1,000 tenants running one guest (bench/tenants.py, which also runs
     alone);
  8. dynamic batching: image-classify and KServe at concurrency 8 and 16
     with EfficientNet's batching off and on, and what a batch saves at
     most in process (bench/batching.py, which also runs alone);
  9. guests in Python and JavaScript: the text-embed pipeline in each
     language beside the Rust example, compiled, loaded and served by one
     runtime (bench/languages.py, which also runs alone).

The report has a section per CPU: a run replaces the section of the CPU it
ran on (its model and vector features) and keeps the others, so that
figures from each kind of machine stay side by side.
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "bench" / "models.json"
MODELS = list(json.loads(SHAPES.read_text()))
SAMPLES = {
    "image-classify": "models/samples/chelsea.png",
    "text-embed": None,
    "speech-detect": "models/samples/speech.wav",
}
# The body text-embed is sent, having no sample file.
TEXT_SAMPLE = b"A cat sits on the mat"


def run(command, env=None, **kwargs):
    if env:
        env = {**os.environ, **env}
    return subprocess.run(command, check=True, cwd=ROOT, env=env, **kwargs)


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


def model_times(binaries, python, runs, rounds, cpu):
    """Samples per (runner, model), the runners taking turns each round:
    tract at the kernel level chosen for this CPU and at each plainer one
    it supports, and onnxruntime."""
    tract = [str(binaries / "mantle-bench"), "models", "models", str(SHAPES), str(runs)]
    runners = {"tract (mantle)": (tract, None)}
    for level in cpu["supported"]:
        if level != cpu["chosen"]:
            runners[f"tract, {level} kernels"] = (tract, {"MANTLE_CPU_KERNELS": level})
    runners["onnxruntime, 1 thread"] = ([str(python), "bench/ort_time.py", "models", str(SHAPES), str(runs), "1"], None)
    runners["onnxruntime, 2 threads"] = ([str(python), "bench/ort_time.py", "models", str(SHAPES), str(runs), "2"], None)
    samples = {(runner, model): [] for runner in runners for model in MODELS}
    for round_ in range(rounds):
        for runner, (command, env) in runners.items():
            print(f"  round {round_ + 1}/{rounds}: {runner}", file=sys.stderr)
            report = json.loads(run(command, env=env, capture_output=True, text=True).stdout)
            for model in MODELS:
                samples[(runner, model)].extend(report[model]["ms"])
    return runners, samples


def matmul_kernels(binaries):
    """Per model, its distinct matrix products: sizes, how many nodes, the
    kernel tract runs here, and what it would pick on AVX2 and AVX-512
    machines, with Intel's and AMD's cost models."""
    command = [str(binaries / "mantle-bench"), "matmuls", "models", str(SHAPES)]
    by_vendor = {
        vendor: json.loads(run(command, env={"TRACT_X86_KIND": vendor}, capture_output=True, text=True).stdout)
        for vendor in ("intel", "amd")
    }
    here = json.loads(run(command, capture_output=True, text=True).stdout)
    table = {}
    for model, products in here.items():
        rows = {}
        for at, product in enumerate(products):
            key = (product["m"], product["k"], product["n"], " + ".join(product["kernels"]),
                   by_vendor["intel"][model][at]["picks"]["avx512"], by_vendor["amd"][model][at]["picks"]["avx512"])
            rows[key] = rows.get(key, 0) + 1
        table[model] = rows
    return table


def sandbox_cost(binaries, runs, measure="sandbox"):
    """Milliseconds per request of each example, in the sandbox and natively,
    taking turns (`mantle-bench sandbox`); or from a snapshot and without
    one (`mantle-bench snapshots`)."""
    with tempfile.TemporaryDirectory(prefix="mantle-bench-") as scratch:
        bodies = []
        for name, path in SAMPLES.items():
            if path is None:
                text = Path(scratch) / f"{name}.txt"
                text.write_bytes(TEXT_SAMPLE)
                path = text
            bodies.append(f"{name}={ROOT / path}")
        command = [str(binaries / "mantle-bench"), measure, "models", str(runs), *bodies]
        return json.loads(run(command, capture_output=True, text=True).stdout)


SNAPSHOTS = "### Pre-initialized guests"


def snapshot_lines(snapshots, runs):
    """The subsection on pre-initialized guests."""
    lines = [
        SNAPSHOTS,
        "",
        "Each example in the sandbox (as in \"The cost of the sandbox\") on two nodes alike but for",
        "`pre_initialize`: on the first, a guest that exports an initializer",
        "(`mantle_guest::init!`) has it run once as its module is made, and every request's",
        "instance starts from the memory snapshotted after it; the second runs no",
        "initializer, so such a guest builds its state on every request. Only text-embed",
        "exports one (it builds its WordPiece tokenizer there); the other two are the",
        "control. The harness checks on every request that both nodes answer the same",
        f"bytes. {runs} requests each after 3 to warm up, taking turns. Milliseconds.",
        "",
        "| example | snapshot p50 | p99 | no snapshot p50 | p99 | no snapshot ÷ snapshot |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return lines + paired_rows(snapshots, "snapshot_ms", "no_snapshot_ms", lambda a, b: b / a)


def paired_rows(results, first, second, ratio):
    """One table row per example: p50 and p99 of its `first` and `second`
    series, then `ratio` of the two p50s."""
    rows = []
    for name, times in results.items():
        a, b = times[first], times[second]
        rows.append(
            f"| {name} | {statistics.median(a):.1f} | {percentile(a, 99):.1f} "
            f"| {statistics.median(b):.1f} | {percentile(b, 99):.1f} | {ratio(statistics.median(a), statistics.median(b)):.2f}× |"
        )
    return rows


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
    """Microseconds per request over HTTP (the no-op guest, `/healthz`, and
    a bare hyper server beside them), with the client on one core and the
    servers on another, and with all of them on one core; and a fresh
    no-op instance per call in process."""
    over_http = {}
    if len(os.sched_getaffinity(0)) > 1:
        over_http["across cores"] = http_path(binaries, runs, servers="0", client="1")
    over_http["one core"] = http_path(binaries, runs, servers="0", client="0")
    command = [str(binaries / "mantle-bench"), "instantiate", str(runs)]
    in_process = json.loads(run(command, capture_output=True, text=True).stdout)
    return over_http, in_process["us"]


def http_path(binaries, runs, servers, client):
    """The node's no-op guest and `/healthz`, and `mantle-bench
    hyper-reference` (hyper alone), each over one keep-alive connection
    from `mantle-bench http`. The node and the reference run on the cores
    `servers`, the client on `client` (`taskset`): left to the scheduler,
    a client and a server settle either on one core or on two and stay
    there, so which figure a run gave would be chance."""
    noop = ROOT / "target" / "guests" / "wasm32-wasip2" / "release" / "noop.wasm"
    key = "bench-key"
    on_servers = ["taskset", "-c", servers]
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
            on_servers + [str(binaries / "mantle"), "serve", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--data-dir", str(Path(scratch) / "data")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        reference = subprocess.Popen(
            on_servers + [str(binaries / "mantle-bench"), "hyper-reference"], stdout=subprocess.PIPE, text=True
        )
        try:
            base = wait_for_banner(node)
            floor = reference.stdout.readline().split()[-1]
            command = ["taskset", "-c", client, str(binaries / "mantle-bench"), "http", base, f"{base}/t/bench/noop",
                       key, str(runs), "--reference", floor]
            return json.loads(run(command, capture_output=True, text=True).stdout)
        finally:
            for server in (node, reference):
                server.terminate()
                server.wait(timeout=30)


CONCURRENCY = [1, 2, 4, 8, 16]
BASELINE = "FastAPI + onnxruntime"


def wrk():
    """The load generator: Debian's wrk, installed if missing. It writes
    each request in one piece, so no TCP acknowledgement delay between a
    request's headers and its body reaches the figures."""
    binary = shutil.which("wrk")
    if binary is None:
        if os.geteuid() != 0:
            raise RuntimeError("the serving benchmark needs wrk: apt-get install wrk")
        run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True)
        binary = shutil.which("wrk")
    return binary


# A wrk script: POST the body file, and print in one line what the text
# report leaves out: requests, duration, p50 and p99 (microseconds), and the
# failures (answers other than 2xx/3xx, socket errors, timeouts).
WRK_SCRIPT = """
local body_path = os.getenv("MANTLE_BENCH_BODY")
local file = assert(io.open(body_path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/octet-stream"
function done(summary, latency, requests)
  local failures = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout
  io.write(string.format("MANTLE %d %d %f %f %d\\n", summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), failures))
end
"""


def load(wrk_binary, script, url, body_path, concurrency, seconds, env=None):
    """One wrk run: requests/s, p50 and p99 in ms, and the failures. `env`
    adds to what the script reads."""
    command = [wrk_binary, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    env = {"MANTLE_BENCH_BODY": str(body_path), **(env or {})}
    output = run(command, env=env, capture_output=True, text=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("MANTLE "))
    requests, duration_us, p50_us, p99_us, failed = line.split()[1:]
    return {
        "rps": int(requests) / (int(duration_us) / 1e6),
        "p50": float(p50_us) / 1e3,
        "p99": float(p99_us) / 1e3,
        "failed": int(failed),
    }


def memory_kib(pids, field):
    """The sum of a /proc/PID/status or smaps_rollup field over `pids`."""
    total = 0
    for pid in pids:
        for name in ("status", "smaps_rollup"):
            try:
                for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def resident_breakdown(pid):
    """Where a process's resident memory is, in KiB, from its smaps:
    anonymous read-write memory (the heap with the models, guests' pool
    slots), anonymous read-only memory (guests compiled in this process),
    the program's own code and its data, and other files."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    groups = {"anonymous, read-write": 0, "anonymous, not writable (compiled code loaded from bytes)": 0, "the binary's code": 0,
              "the binary's read-only data and data": 0, "other files (libraries, guests' cached compiled code)": 0}
    kind = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            perms, path = fields[1], (fields[5] if len(fields) > 5 else "")
            if path == exe:
                kind = "the binary's code" if "x" in perms else "the binary's read-only data and data"
            elif path and not path.startswith("["):
                kind = "other files (libraries, guests' cached compiled code)"
            elif "w" in perms:
                kind = "anonymous, read-write"
            else:
                kind = "anonymous, not writable (compiled code loaded from bytes)"
        elif fields and fields[0] == "Rss:" and kind:
            groups[kind] += int(fields[1])
    return groups


def process_tree(pid):
    """`pid` and its children (uvicorn's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [pid] + [int(c) for c in children.read_text().split()]
    except OSError:
        return [pid]


def wait_until_serving(port, path, body, started, limit=120):
    wait_until(lambda: post(port, path, body) == 200, started, limit, f"nothing answered 200 on port {port}{path}")


def wait_until(check, started, limit, failure):
    """Calls `check` until it is true; past `limit` seconds from `started`,
    fails saying `failure`."""
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.perf_counter() - started > limit:
            raise RuntimeError(f"{failure} within {limit} s")
        time.sleep(0.05)


def baseline_sockets(port, count):
    """`count` listening sockets on one port, for one uvicorn process each.

    Each has SO_REUSEPORT, so the kernel spreads connections over the
    processes; uvicorn's own `--workers` shares one socket, from which the
    first worker to wake accepts every connection a load generator opens at
    once. Each also has TCP_NODELAY, which accepted sockets inherit: a
    socket uvicorn takes by file descriptor gets none from asyncio, and then
    Nagle's algorithm holds each response's body until the client's delayed
    acknowledgement of its headers, 40 ms later."""
    listeners = []
    for _ in range(count):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        listeners.append(listener)
    return listeners


def serving(binaries, python, seconds, rounds):
    """image-classify under load from wrk at each concurrency: mantle and
    the FastAPI baseline with one uvicorn process and with as many as mantle
    has inference threads, all up at once and taking turns, `rounds` times;
    the run with the median throughput of each stands. Also each server's
    memory, idle and at its peak."""
    wrk_binary = wrk()
    sample = ROOT / SAMPLES["image-classify"]
    body = sample.read_bytes()
    workers = os.cpu_count() or 1
    servers = {
        "mantle": (
            1,
            [str(binaries / "mantle"), "serve", "--listen", "127.0.0.1:{port}", "--data-dir", "{scratch}"],
            "/t/demo/image-classify",
        ),
    }
    # The baseline as one uvicorn process and as one per core, each on its
    # own SO_REUSEPORT socket (see `baseline_sockets`); judged by the
    # better of the two at each concurrency.
    for count in sorted({1, workers}):
        servers[f"{BASELINE}, {count} process{'es' if count > 1 else ''}"] = (
            count,
            [str(python), "-m", "uvicorn", "--app-dir", "bench", "baseline_server:app", "--fd", "{fd}",
             "--log-level", "warning"],
            "/classify",
        )
    running = {}
    with tempfile.TemporaryDirectory(prefix="mantle-bench-") as scratch:
        script = Path(scratch) / "post.lua"
        script.write_text(WRK_SCRIPT)
        try:
            for name, (count, template, path) in servers.items():
                port = free_port()
                started = time.perf_counter()
                processes = []
                if "{fd}" in template:
                    for listener in baseline_sockets(port, count):
                        command = [part.format(fd=listener.fileno()) for part in template]
                        processes.append(subprocess.Popen(command, cwd=ROOT, pass_fds=(listener.fileno(),),
                                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                        listener.close()
                else:
                    command = [part.format(port=port, scratch=scratch) for part in template]
                    processes.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL))
                running[name] = (processes, f"http://127.0.0.1:{port}{path}")
                wait_until_serving(port, path, body, started)
            time.sleep(1)
            pids = {name: [pid for process in processes for pid in process_tree(process.pid)]
                    for name, (processes, _) in running.items()}
            idle = {name: {"rss": memory_kib(p, "VmRSS"), "pss": memory_kib(p, "Pss")} for name, p in pids.items()}
            idle["mantle"]["breakdown"] = resident_breakdown(pids["mantle"][0])
            for name, (_, url) in running.items():
                load(wrk_binary, script, url, sample, max(CONCURRENCY), 2)  # warm-up
            runs = {name: {c: [] for c in CONCURRENCY} for name in running}
            for round_ in range(rounds):
                for c in CONCURRENCY:
                    for name, (_, url) in running.items():
                        print(f"  round {round_ + 1}/{rounds}: {name}, concurrency {c}", file=sys.stderr)
                        runs[name][c].append(load(wrk_binary, script, url, sample, c, seconds))
            # What each keeps once the load is over.
            time.sleep(1)
            after = {name: memory_kib(p, "VmRSS") for name, p in pids.items()}
            after_breakdown = resident_breakdown(pids["mantle"][0])
            results = {}
            for name in running:
                levels = {c: sorted(r, key=lambda run: run["rps"])[len(r) // 2] for c, r in runs[name].items()}
                failed = sum(run["failed"] for r in runs[name].values() for run in r)
                peak = memory_kib(pids[name], "VmHWM")
                results[name] = {"levels": levels, "failed": failed, "idle": idle[name], "peak": peak,
                                 "after": after[name],
                                 "processes": len(pids[name])}
            results["mantle"]["after_breakdown"] = after_breakdown
            return results
        finally:
            for processes, _ in running.values():
                for process in processes:
                    process.terminate()
                    process.wait(timeout=30)


def cold_start(binaries, data_dir):
    """Seconds from spawning `mantle serve` to each example's first answer.
    Each example has its own client, as separate users would, polling until
    it gets a 200, so that one example's answer does not wait on another's."""
    port = free_port()
    bodies = {name: (ROOT / path).read_bytes() if path else TEXT_SAMPLE for name, path in SAMPLES.items()}
    started = time.perf_counter()
    node = subprocess.Popen(
        [str(binaries / "mantle"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    answered = {}

    def first_answer(name, body):
        while time.perf_counter() - started < 120:
            try:
                if post(port, f"/t/demo/{name}", body) == 200:
                    answered[name] = time.perf_counter() - started
                    return
            except OSError:
                pass
            time.sleep(0.002)

    try:
        clients = [threading.Thread(target=first_answer, args=item) for item in bodies.items()]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        if len(answered) != len(bodies):
            raise RuntimeError("the node did not answer every example within 120 s")
        return answered
    finally:
        node.terminate()
        node.wait(timeout=30)


def machine():
    rustc = subprocess.run(["rustc", "-V"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    # Figures taken from a tree with changes not yet committed say so.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if commit and dirty:
        commit += " with uncommitted changes"
    return f"{os.cpu_count()} cores, {platform.system()} {platform.release()}; {rustc}; mantle at {commit or 'unknown'}"


INTRO = """# Benchmarks

Produced by `python3 bench/run.py`; do not edit by hand. A section per CPU:
each run replaces the section of the CPU it ran on and keeps the others.
Everything in a section was measured side by side in one run on a shared,
noisy machine: compare figures as ratios within a section, and across CPUs
only the ratios. A lead on one CPU says nothing about another.
"""


SECTION = "## CPU: "


def splice_subsection(heading, subsection, script, cpu, profile, lines):
    """Replaces `subsection` of `heading`'s section of docs/BENCHMARKS.md
    with `lines`, which `script` measured alone, or starts that section
    with it if this CPU has none yet."""
    path = ROOT / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    new = "\n".join(lines)
    if heading not in text:
        section = [
            heading,
            "",
            f"- Taken: {datetime.date.today().isoformat()}, cargo profile `{profile}`, by `{script}`",
            "  alone: the rest of `bench/run.py` has not run on this CPU yet.",
            f"- Machine: {machine()}.",
            f"- Vector features: {' '.join(cpu['features'])}.",
            "",
            new,
        ]
        path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section).rstrip("\n") + "\n")
        return
    start = text.index(heading)
    end = text.find("\n" + SECTION, start + 1)
    end = len(text) if end < 0 else end + 1
    body = text[start:end]
    if subsection in body:
        a = body.index(subsection)
        b = body.find("\n### ", a + 1)
        body = body[:a] + new + (body[b:] if b >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + new
    rest = text[end:]
    path.write_text(text[:start] + body.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))


def write_report(heading, section):
    """Replaces this CPU's section of docs/BENCHMARKS.md, keeping the
    sections of other CPUs in the order they were first written."""
    path = ROOT / "docs" / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    sections = []
    for line in text.splitlines():
        if line.startswith(SECTION):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    bodies = [section if lines[0] == heading else "\n".join(lines).strip() + "\n" for lines in sections]
    if heading not in (lines[0] for lines in sections):
        bodies.append(section)
    path.write_text(INTRO + "\n" + "\n".join(bodies))


def host_overhead_lines(over_http, instantiate, requests):
    """The host overhead section's text and table."""
    lines = [
        f"{requests} timed requests after 100 to warm up, concurrency 1, each server over",
        "one keep-alive connection from `mantle-bench http` (a blocking client that",
        "writes each request in one system call and does no more than a request needs:",
        "on one core, its own work is in every figure).",
        "The reference is `mantle-bench hyper-reference`: hyper alone answering `ok`,",
        "in a process of its own. `/healthz`, the reference and the no-op guest take",
        "turns in blocks of 250 requests, and the first of each block is not kept:",
        "request by request, each server would be measured in the other's wake (a core",
        "still busy with one answer takes the next request without a halted core's",
        "wake-up), and a guest request's leftover work (its instance's memory reset) would",
        "be charged to the probe after it. \"Across cores\": the servers run on one core",
        "and the client on another; \"one core\": all three share one core, which takes",
        "the cost of waking a thread on another core out of the figures. Both are pinned",
        "(`taskset`): left to the scheduler, a client and a server settle either on one",
        "core or on two and stay there, so a figure would depend on where they started.",
        "In process, each call makes a fresh instance",
        "of the no-op guest and calls its handler, as the node does per request.",
        "Microseconds; the ratio is to hyper alone in the same run.",
        "",
        "| what | cores | p50 | p99 | ÷ hyper alone |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cores, measured in over_http.items():
        floor = statistics.median(measured["hyper_us"])
        for what, key in [("hyper alone", "hyper_us"), ("`/healthz` (no guest)", "healthz_us"),
                          ("no-op guest", "noop_us")]:
            values = measured[key]
            lines.append(
                f"| {what} | {cores} | {statistics.median(values):.1f} | {percentile(values, 99):.1f} "
                f"| {statistics.median(values) / floor:.2f}× |"
            )
    lines.append(
        f"| fresh no-op instance + call, in process | any core | {statistics.median(instantiate):.1f} "
        f"| {percentile(instantiate, 99):.1f} | |"
    )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release", help="cargo profile to build mantle with (default: release)")
    parser.add_argument("--runs", type=int, default=30, help="inferences per model per round (default: 30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every runner, interleaved (default: 3)")
    parser.add_argument("--starts", type=int, default=5, help="warm-cache starts to time (default: 5)")
    parser.add_argument("--requests", type=int, default=5000, help="no-op requests to time (default: 5000)")
    parser.add_argument("--seconds", type=int, default=6, help="seconds of each load run (default: 6)")
    parser.add_argument("--follow-rounds", type=int, default=5, help="tag moves of each kind to time (default: 5)")
    parser.add_argument(
        "--tenant-requests", type=int, default=200, help="one tenant's timed requests per tenant count (default: 200)"
    )
    parser.add_argument(
        "--tenant-rounds", type=int, default=5,
        help="rounds of the tenant sizes, taking turns (default: 5; the latency under load is noisy)",
    )
    parser.add_argument(
        "--only-snapshots", action="store_true",
        help="measure only the pre-initialized guests, and replace that subsection of the report",
    )
    args = parser.parse_args()

    binaries = build(args.profile)
    if args.only_snapshots:
        cpu = json.loads(run([str(binaries / "mantle-bench"), "cpu"], capture_output=True, text=True).stdout)
        lines = snapshot_lines(sandbox_cost(binaries, args.runs, "snapshots"), args.runs) + [""]
        print("\n".join(lines))
        heading = SECTION + cpu["description"].replace("; vector features: ", " (") + ")"
        splice_subsection(heading, SNAPSHOTS, "bench/run.py --only-snapshots", cpu, args.profile, lines)
        return
    python = venv()
    ort_version = subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"], capture_output=True, text=True
    ).stdout.strip()

    cpu = json.loads(run([str(binaries / "mantle-bench"), "cpu"], capture_output=True, text=True).stdout)
    print("raw model time", file=sys.stderr)
    runners, samples = model_times(binaries, python, args.runs, args.rounds, cpu)
    print("matrix-product kernels", file=sys.stderr)
    matmuls = matmul_kernels(binaries)
    print("operations", file=sys.stderr)
    command = [str(binaries / "mantle-bench"), "ops", "models", str(SHAPES), str(args.runs)]
    profiles = json.loads(run(command, capture_output=True, text=True).stdout)
    print("sandbox", file=sys.stderr)
    sandboxed = sandbox_cost(binaries, args.runs)
    print("pre-initialized guests", file=sys.stderr)
    snapshots = sandbox_cost(binaries, args.runs, "snapshots")
    print("host overhead", file=sys.stderr)
    over_http, instantiate = host_overhead(binaries, args.requests)
    print("serving", file=sys.stderr)
    served = serving(binaries, python, args.seconds, args.rounds)
    print("cold start", file=sys.stderr)
    data_dir = Path(tempfile.mkdtemp(prefix="mantle-bench-"))
    try:
        cold = cold_start(binaries, data_dir)
        warm = [cold_start(binaries, data_dir) for _ in range(args.starts)]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    print("following a registry tag", file=sys.stderr)
    import follow  # it builds on this module's helpers

    followed = follow.measure(binaries, args.follow_rounds)

    print("tenants", file=sys.stderr)
    import tenants  # it builds on this module's helpers

    tenant_sizes = [1, 10, 100, 1000]
    scaled = tenants.measure(binaries, tenant_sizes, args.starts, args.tenant_requests, args.tenant_rounds)

    print("dynamic batching", file=sys.stderr)
    import batching  # it builds on this module's helpers

    batched = batching.measure(binaries, args.seconds, args.rounds)

    print("guests in Python and JavaScript", file=sys.stderr)
    import languages  # it builds on this module's helpers

    language_runs = 100
    spoken = languages.measure(binaries, language_runs)

    heading = SECTION + cpu["description"].replace("; vector features: ", " (") + ")"
    lowered = "" if cpu["chosen"] == cpu["detected"] else f", lowered from {cpu['detected']} by MANTLE_CPU_KERNELS"
    lines = [
        heading,
        "",
        f"- Taken: {datetime.date.today().isoformat()}, cargo profile `{args.profile}`.",
        f"- Machine: {machine()}.",
        f"- Vector features: {' '.join(cpu['features'])}.",
        f"- mantle's kernels ran at `{cpu['chosen']}`{lowered}; this CPU supports {', '.join(cpu['supported'])}.",
        f"- onnxruntime {ort_version} (the Python wheel, CPU provider).",
        "",
        "### Raw model time",
        "",
        "One inference on zeros of the shapes in `bench/models.json` (batch 1; MiniLM 32 tokens;",
        f"PP-OCR one 320×48 line); {args.runs} timed runs per",
        f"model after one warm-up, in {args.rounds} rounds that take turns between the runners.",
        "tract runs each model as the node does: pinned as the examples pin it",
        "(PP-OCR, which no example uses, with every dimension pinned), optimized",
        "once, on one thread. Milliseconds.",
        "",
        "Rows `tract, LEVEL kernels` run mantle's own kernels (the channel-last",
        "convolutions and depthwise convolutions) at a plainer vector level than",
        "this CPU's, by `MANTLE_CPU_KERNELS`; tract's own kernels are the same.",
        "",
        "| model | runner | p50 | p99 | tract ÷ this |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        tract = statistics.median(samples[("tract (mantle)", model)])
        for runner in runners:
            values = samples[(runner, model)]
            p50 = statistics.median(values)
            ratio = "" if runner == "tract (mantle)" else f"{tract / p50:.2f}×"
            lines.append(f"| {model} | {runner} | {p50:.2f} | {percentile(values, 99):.2f} | {ratio} |")
    lines += [
        "",
        "#### tract's matrix-product kernels",
        "",
        "Each model's distinct matrix products (`m × k` by `k × n`; `?` is a size known",
        "only when the model runs, such as MiniLM's sequence length), the kernel tract",
        "chose for them on this CPU (two where it keeps a matrix-vector kernel beside",
        "the matrix one), and the one tract's own policy picks for the same sizes on an",
        "AVX-512 machine, with its Intel and its AMD cost model (`mantle-bench matmuls`).",
        "",
        "| model | m | k | n | nodes | kernel here | AVX-512, Intel | AVX-512, AMD |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    size = lambda d: "?" if d is None else str(d)
    for model, rows in matmuls.items():
        for (m, k, n, here, intel, amd), count in rows.items():
            lines.append(f"| {model} | {size(m)} | {size(k)} | {size(n)} | {count} | `{here}` | `{intel}` | `{amd}` |")
    lines += [
        "",
        "#### Where tract's time goes",
        "",
        "Per model, the kinds of operation in tract's optimized plan and their time per",
        f"inference, summed over nodes, over {args.runs} profiled inferences (`mantle-bench ops`,",
        "timing each node as it runs, so the total is a little above the p50 above).",
        "Kinds under 2% of a model's time are left out. Milliseconds. What has been",
        "changed and tried against these, with figures: `docs/PERF-LOG.md`.",
        "",
        "| model | operation | nodes | ms | share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        total = sum(op["ms"] for op in profiles[model])
        lines.append(f"| {model} | all | {sum(op['nodes'] for op in profiles[model])} | {total:.2f} | 100% |")
        for op in profiles[model]:
            if op["ms"] >= 0.02 * total:
                lines.append(f"| | `{op['op']}` | {op['nodes']} | {op['ms']:.2f} | {100 * op['ms'] / total:.0f}% |")
    lines += [
        "",
        "### The cost of the sandbox",
        "",
        "Each example's handler, as the node runs it (compiled to WebAssembly, a fresh",
        "instance per request, its model through `wasi:nn`), against the same Rust",
        "handler compiled natively into `mantle-bench` and calling the same loaded models",
        "directly (`mantle-guest`'s native backend). Both answer with the same bytes,",
        "which the harness checks on every request. In process, no HTTP;",
        f"{args.runs} requests each after 3 to warm up, taking turns. The bodies are",
        "the serving and cold-start samples. Milliseconds.",
        "",
        "| example | sandbox p50 | p99 | native p50 | p99 | sandbox ÷ native |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += paired_rows(sandboxed, "sandbox_ms", "native_ms", lambda a, b: a / b)
    lines += [""] + snapshot_lines(snapshots, args.runs)
    lines += ["", "### Host overhead", ""] + host_overhead_lines(over_http, instantiate, args.requests)
    lines += [
        "",
        "### Serving image-classify",
        "",
        f"`wrk` (one thread) sends `{SAMPLES['image-classify']}` ({(ROOT / SAMPLES['image-classify']).stat().st_size} bytes) over",
        f"keep-alive connections, {args.seconds} s per run, after a 2 s warm-up. Both servers are up",
        f"at once and take turns, each concurrency in turn, for {args.rounds} rounds; the run with",
        "the median throughput stands. mantle runs as `mantle serve` does with no configuration (the three",
        "examples, one inference thread per core). The baseline is",
        "`bench/baseline_server.py`: FastAPI on uvicorn, Pillow, onnxruntime, the",
        "same pipeline and answer, with one onnxruntime thread per uvicorn process, run",
        f"twice: as one process, and as {os.cpu_count()} so that it uses every core as mantle does. Each",
        "process has its own `SO_REUSEPORT` socket with `TCP_NODELAY` (`baseline_sockets`",
        "in `bench/run.py` says why: without them, uvicorn's multi-worker mode let one",
        "worker take every connection and added 40 ms to each answer). The ratio is taken",
        "against the better of the two at each concurrency. Requests/s, and latency in",
        "milliseconds.",
        "",
        "| concurrency | " + " | ".join(f"{name} req/s | p50 | p99" for name in served) + " | mantle ÷ better baseline, req/s | p99 |",
        "| --- | " + " | ".join("--- | --- | ---" for _ in served) + " | --- | --- |",
    ]
    mantle_levels = served["mantle"]["levels"]
    baselines = [name for name in served if name.startswith(BASELINE)]
    for c in CONCURRENCY:
        cells = [f"{r['levels'][c]['rps']:.1f} | {r['levels'][c]['p50']:.1f} | {r['levels'][c]['p99']:.1f}" for r in served.values()]
        better = max((served[name]["levels"][c] for name in baselines), key=lambda level: level["rps"])
        ratio = mantle_levels[c]["rps"] / better["rps"]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {ratio:.2f}× | {mantle_levels[c]['p99'] / better['p99']:.2f}× |")
    failures = {name: r["failed"] for name, r in served.items()}
    best = {name: max(r["levels"].values(), key=lambda level: level["rps"]) for name, r in served.items()}
    best_baseline = max((best[name] for name in baselines), key=lambda level: level["rps"])
    lines += [
        "",
        "Best throughput: " + "; ".join(f"{name} {b['rps']:.1f} req/s (p99 {b['p99']:.1f} ms)" for name, b in best.items())
        + f"; mantle ÷ the best baseline, each at its best concurrency: {best['mantle']['rps'] / best_baseline['rps']:.2f}×.",
        "Responses other than 200, over all runs: " + ", ".join(f"{name} {n}" for name, n in failures.items()) + ".",
        "",
        "### Memory",
        "",
        "Of the same servers: resident memory once they answer their first request",
        "(idle), the peak during the load above, and what they keep once it is over",
        "(idle again, a second after the last run). mantle's node starts with an",
        "empty data directory, so it compiles its guests as a first start does. For",
        "the baseline, a sum over uvicorn's processes: its idle PSS counts pages the",
        "processes share once, while the peak adds each process's own high-water",
        "mark. mantle holds all three examples and their models; the baseline holds",
        "EfficientNet-Lite0 only. MiB.",
        "",
        "| server | processes | idle RSS | idle PSS | peak RSS | idle RSS after the load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in served.items():
        lines.append(
            f"| {name} | {r['processes']} | {r['idle']['rss'] / 1024:.0f} | {r['idle']['pss'] / 1024:.0f} "
            f"| {r['peak'] / 1024:.0f} | {r['after'] / 1024:.0f} |"
        )
    lines += [
        "",
        "Where mantle's idle resident memory is, from `/proc/PID/smaps`, once it",
        "answers and after the load. The models are in the anonymous read-write",
        "memory; `mantle-bench memory` gives each model's share. The pages of the",
        "binary's code and read-only data are handed back once the node has loaded",
        "what it serves, and fault back in as requests use them; guests' compiled",
        "code is mapped from the compiled-code cache. `docs/PERF-LOG.md` has the",
        "figures before each change. MiB.",
        "",
        "| where | once it answers | after the load |",
        "| --- | --- | --- |",
    ]
    after_breakdown = served["mantle"]["after_breakdown"]
    for where, kib in served["mantle"]["idle"]["breakdown"].items():
        lines.append(f"| {where} | {kib / 1024:.1f} | {after_breakdown[where] / 1024:.1f} |")
    names = list(SAMPLES)
    lines += [
        "",
        "### Cold start",
        "",
        "From spawning `mantle serve` (no configuration: the three examples) to each",
        "example's first 200. Each example has its own client, which polls from",
        "the start until it gets an answer, so the three first requests run side by",
        "side. The first start has an empty data directory, so it compiles the",
        f"guests and fills the compiled-code cache; the next {args.starts} reuse it. Seconds.",
        "",
        "| start | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
        "| empty cache | " + " | ".join(f"{cold[n]:.3f}" for n in names) + " |",
        "| warm cache, median | " + " | ".join(f"{statistics.median(w[n] for w in warm):.3f}" for n in names) + " |",
        "| warm cache, best | " + " | ".join(f"{min(w[n] for w in warm):.3f}" for n in names) + " |",
        "",
    ]
    lines += follow.section(followed, args.follow_rounds)
    lines += tenants.section(scaled, args.starts, args.tenant_requests, args.tenant_rounds)
    lines += batching.section(batched, args.seconds, args.rounds)
    lines += [""] + languages.section(spoken, language_runs)
    report = "\n".join(lines)
    write_report(heading, report)
    print(report)


if __name__ == "__main__":
    main()
