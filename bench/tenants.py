"""How a node's cost grows with its tenants: 1, 10, 100 and 1,000 tenants,
each with its own module running the image-classify example guest, all
granted the one EfficientNet-Lite0 the node loads (models are shared by
digest). For each size, with the compiled-code cache warm:

- start: from spawning `mantle serve` to its "listening" line, the median
  of a few starts, and to the first answer of the last tenant;
- idle RSS once it listens;
- the latency of one tenant's requests, one at a time, while 10 clients of
  10 other tenants (of the same tenant, with a single one) each send a
  request every 250 ms.

    python3 bench/tenants.py [--sizes 1,10,100,1000] [--starts 3]
        [--requests 200] [--rounds 3]

Run alone, it replaces its subsection of this CPU's section of
docs/BENCHMARKS.md; `bench/run.py` runs it as one of its steps.
"""

import argparse
import hashlib
import http.client
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import run as harness

SUBSECTION = "### Tenants"
MODULE = "classify"
LOADERS = 10
LOAD_INTERVAL = 0.25


def key(tenant):
    return f"key-{tenant}"


def node_config(tenants):
    model = harness.ROOT / "models" / "efficientnet-lite0" / "model.onnx"
    lines = [
        "[[model]]",
        'name = "efficientnet-lite0"',
        f"path = {json.dumps(str(model))}",
        "pin = { N = 1 }",
        "",
    ]
    for i in range(tenants):
        digest = hashlib.sha256(key(i).encode()).hexdigest()
        lines += [
            "[[tenant]]",
            f'id = "t{i}"',
            f'key_sha256 = ["{digest}"]',
            'grants = ["efficientnet-lite0"]',
            "[[tenant.module]]",
            f'id = "{MODULE}"',
            'example = "image-classify"',
            'models = ["efficientnet-lite0"]',
            "",
        ]
    return "\n".join(lines)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Node:
    """`mantle serve` on `config` and `data`, up until it listens."""

    def __init__(self, binaries, config, data):
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(binaries / "mantle"), "serve", "--config", str(config), "--listen", "127.0.0.1:0",
             "--data-dir", str(data)],
            cwd=harness.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        base = harness.wait_for_banner(self.process)
        self.listening = time.perf_counter() - self.started
        self.port = int(base.rsplit(":", 1)[1])

    def post(self, connection, tenant, body):
        connection.request("POST", f"/t/t{tenant}/{MODULE}", body, {"authorization": f"Bearer {key(tenant)}"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"tenant t{tenant} answered {response.status}")

    def connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def measure_size(binaries, tenants, starts, requests, body):
    with tempfile.TemporaryDirectory(prefix="mantle-tenants-") as scratch:
        scratch = Path(scratch)
        config = scratch / "node.toml"
        config.write_text(node_config(tenants))
        data = scratch / "data"
        # The first start compiles the guest and fills the cache.
        Node(binaries, config, data).stop()
        listening, first_answers = [], []
        for _ in range(starts):
            node = Node(binaries, config, data)
            listening.append(node.listening)
            node.post(node.connect(), tenants - 1, body)
            first_answers.append(time.perf_counter() - node.started)
            if len(listening) < starts:
                node.stop()
        try:
            time.sleep(1)
            idle = rss_mib(node.process.pid)
            stop = threading.Event()
            failures = []

            def load(tenant, offset):
                connection = node.connect()
                next_at = time.perf_counter() + offset
                while not stop.is_set():
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += LOAD_INTERVAL
                    try:
                        node.post(connection, tenant, body)
                    except Exception as error:  # noqa: BLE001 - reported below
                        failures.append(str(error))
                        return

            others = [1 + i % (tenants - 1) if tenants > 1 else 0 for i in range(LOADERS)]
            loaders = [
                threading.Thread(target=load, args=(tenant, i * LOAD_INTERVAL / LOADERS))
                for i, tenant in enumerate(others)
            ]
            for loader in loaders:
                loader.start()
            connection = node.connect()
            for _ in range(10):
                node.post(connection, 0, body)
            latencies = []
            for _ in range(requests):
                sent = time.perf_counter()
                node.post(connection, 0, body)
                latencies.append((time.perf_counter() - sent) * 1e3)
            stop.set()
            for loader in loaders:
                loader.join()
            if failures:
                raise RuntimeError(f"the load failed: {failures[0]}")
            loaded = rss_mib(node.process.pid)
        finally:
            node.stop()
    return {
        "tenants": tenants,
        "listening_s": statistics.median(listening),
        "first_answer_s": statistics.median(first_answers),
        "idle_rss_mib": idle,
        "loaded_rss_mib": loaded,
        "p50_ms": statistics.median(latencies),
        "p99_ms": harness.percentile(latencies, 99),
    }


def measure(binaries, sizes, starts, requests, rounds):
    """Each size in turn, `rounds` times over; per size, the median of each
    figure over the rounds. The latency under load moves by 10-25% from
    one run to the next on a shared machine, so the sizes take turns, in
    the opposite order every other round (a machine slowing down through a
    round does not always land on the last size), and each round's p50 is
    also taken as a ratio to the first size's in the same round."""
    body = (harness.ROOT / harness.SAMPLES["image-classify"]).read_bytes()
    runs = {tenants: [] for tenants in sizes}
    for round_ in range(rounds):
        order = sizes if round_ % 2 == 0 else list(reversed(sizes))
        for tenants in order:
            print(f"  round {round_ + 1}/{rounds}: {tenants} tenants", flush=True)
            runs[tenants].append(measure_size(binaries, tenants, starts, requests, body))
        reference = runs[sizes[0]][round_]["p50_ms"]
        for tenants in sizes:
            runs[tenants][round_]["p50_ratio"] = runs[tenants][round_]["p50_ms"] / reference
    return [
        {"tenants": tenants, **{key: statistics.median(r[key] for r in measured) for key in measured[0] if key != "tenants"}}
        for tenants, measured in runs.items()
    ]


def sizes_first(results):
    """The first size's name, as the ratio column says it."""
    first = results[0]["tenants"]
    return "1 tenant" if first == 1 else f"{first} tenants"


def section(results, starts, requests, rounds):
    lines = [
        SUBSECTION,
        "",
        "A node with N tenants, each with its own module running the image-classify example guest",
        "(`example = \"image-classify\"`), all granted the one EfficientNet-Lite0 of the node's",
        "configuration (`bench/tenants.py`). Compiled-code cache warm. \"listening\" is from spawning",
        f"`mantle serve` to its listening line, the median of {starts} starts; \"first answer\" to the",
        "last tenant's first answer. Idle RSS once it listens; \"loaded\" after the latency run. The",
        f"latency is one tenant's, {requests} requests one at a time, while {LOADERS} clients of {LOADERS} other",
        f"tenants each send one every {int(LOAD_INTERVAL * 1000)} ms (with one tenant, they send to it). The sizes",
        f"take turns, {rounds} rounds, in the opposite order every other round; each figure is the",
        f"median over the rounds, and \"p50 ÷ {sizes_first(results)}\" the median of each round's p50 over",
        "the first size's in the same round. The line below the table is the cost of each tenant",
        "added, from the first row to the last.",
        "",
        f"| tenants | listening s | first answer s | idle RSS MiB | loaded RSS MiB | p50 ms | p99 ms "
        f"| p50 ÷ {sizes_first(results)} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['tenants']} | {r['listening_s']:.3f} | {r['first_answer_s']:.3f} | {r['idle_rss_mib']:.1f} "
            f"| {r['loaded_rss_mib']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p50_ratio']:.2f}× |"
        )
    first, last = results[0], results[-1]
    added = last["tenants"] - first["tenants"]
    if added > 0:
        per_ms = (last["listening_s"] - first["listening_s"]) * 1e3 / added
        per_mib = (last["idle_rss_mib"] - first["idle_rss_mib"]) / added
        lines += [
            "",
            f"Per tenant added ({first['tenants']} → {last['tenants']}): {per_ms:.3f} ms of start and "
            f"{per_mib * 1024:.1f} KiB of idle RSS; the measured tenant's p50 is "
            f"{last['p50_ratio']:.2f}× the one-tenant figure of the same round (the median over rounds).",
        ]
    lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release")
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binaries = harness.build(args.profile)
    cpu = json.loads(harness.run([str(binaries / "mantle-bench"), "cpu"], capture_output=True, text=True).stdout)
    sizes = [int(size) for size in args.sizes.split(",")]
    measured = measure(binaries, sizes, args.starts, args.requests, args.rounds)
    lines = section(measured, args.starts, args.requests, args.rounds)
    print("\n".join(lines))
    heading = harness.SECTION + cpu["description"].replace("; vector features: ", " (") + ")"
    harness.splice_subsection(heading, SUBSECTION, "bench/tenants.py", cpu, args.profile, lines)


if __name__ == "__main__":
    main()
