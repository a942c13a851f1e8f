#!/usr/bin/env python3
"""Nodes following a registry tag: how long from a tag move to the first
answer from the new version, and how many registry requests a node makes
while nothing moves. `bench/run.py` runs it with everything else; alone,

    python3 bench/follow.py [--profile release|dev] [--rounds N]

it measures only this and replaces its subsection of this CPU's section of
docs/BENCHMARKS.md.

A real registry (Debian's `docker-registry`, the CNCF distribution server)
on loopback; three `mantle serve` nodes on 127.0.0.1, .2 and .3 following
one tag at a 1 s poll; a bundle of the echo guest greeting with its version
and the EfficientNet-Lite0 model (13 MB) riding along, so that a blob the
node has is visibly not fetched again.
"""

import argparse
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import http.client
from pathlib import Path

import run as harness

ROOT = harness.ROOT
NODES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
OPERATOR_TOKEN = "operator-secret-0123456789"
TENANT_KEY = "mk_bench_0123456789abcdef"
REPO = "bench/greeter"
INTERVAL_MS = 1000
IDLE_SECONDS = 30
SUBSECTION = "### Following a registry tag"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def start_registry(storage):
    """The registry on a free port, logging each request to its stdout."""
    port = harness.free_port()
    config = storage / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(storage / "access.log", "wb")
    registry = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/")
            if connection.getresponse().status == 200:
                return registry, port, storage / "access.log"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the registry did not start")


def padded(wasm, seed):
    """`wasm` with a custom section that differs per `seed`: another
    component, whose code the node must compile."""
    name = b"mantle-bench-padding"
    payload = bytes([len(name)]) + name + hashlib.sha256(str(seed).encode()).digest()
    size, encoded = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        encoded.append(byte | (0x80 if size else 0))
        if not size:
            break
    return wasm + b"\x00" + bytes(encoded) + payload


def pack(binaries, work, version, guest):
    """Bundle `greeter` at `version`, `guest` greeting with the version."""
    directory = work / f"greeter-{version}"
    (directory / "models").mkdir(parents=True)
    model = (ROOT / "models" / "efficientnet-lite0" / "model.onnx").read_bytes()
    (directory / "models" / "effnet.onnx").write_bytes(model)
    (directory / "greet.wasm").write_bytes(guest)
    (directory / "mantle.toml").write_text(
        f'[bundle]\nname = "greeter"\nversion = "{version}"\n\n'
        f'[[model]]\nname = "effnet"\nfile = "models/effnet.onnx"\nsha256 = "{sha256(model)}"\npin = {{ N = 1 }}\n\n'
        f'[[module]]\nid = "greet"\nfile = "greet.wasm"\nmodels = ["effnet"]\n'
        f'config = {{ greeting = "version {version}" }}\n'
    )
    out = work / f"greeter-{version}.mbundle"
    harness.run([str(binaries / "mantle"), "bundle", str(directory), "-o", str(out)], capture_output=True)
    return out


def push(binaries, bundle, reference):
    harness.run([str(binaries / "mantle"), "push", str(bundle), reference, "--insecure"], capture_output=True)


def start_node(binaries, work, address, reference):
    config = work / f"node-{address}.toml"
    config.write_text(
        f'[node]\nadmin_token_sha256 = "{sha256(OPERATOR_TOKEN.encode())}"\n\n'
        f'[[tenant]]\nid = "bench"\nkey_sha256 = ["{sha256(TENANT_KEY.encode())}"]\n\n'
        f'[[tenant.follow]]\nreference = "{reference}"\ninterval_ms = {INTERVAL_MS}\ninsecure = true\n'
    )
    port = harness.free_port()
    node = subprocess.Popen(
        [str(binaries / "mantle"), "serve", "--config", str(config), "--data-dir", str(work / f"data-{address}"),
         "--listen", f"{address}:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    harness.wait_for_banner(node)
    return node, (address, port)


def greeting(address):
    host, port = address
    try:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("POST", "/t/bench/greet", headers={"authorization": f"Bearer {TENANT_KEY}"})
        response = connection.getresponse()
        body = response.read()
        return json.loads(body).get("greeting") if response.status == 200 else None
    except (OSError, ValueError):
        return None


def first_answers(addresses, expected, moved, limit=120):
    """Seconds from `moved` to each node's first answer greeting `expected`."""
    seen = {}

    def watch(address):
        while time.perf_counter() - moved < limit:
            if greeting(address) == expected:
                seen[address] = time.perf_counter() - moved
                return
            time.sleep(0.005)

    watchers = [threading.Thread(target=watch, args=(a,)) for a in addresses]
    for watcher in watchers:
        watcher.start()
    for watcher in watchers:
        watcher.join()
    if len(seen) != len(addresses):
        raise RuntimeError(f"not every node served {expected!r} within {limit} s")
    return list(seen.values())


def requests_in(log, start, end):
    """Registry requests logged between byte offsets `start` and `end`: all
    of them, the HEADs of a manifest, and the probes of `/v2/`."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    return {
        "all": len(re.findall(r'"[A-Z]+ /v2/', text)),
        "head": len(re.findall(r'"HEAD /v2/\S+/manifests/', text)),
        "probe": len(re.findall(r'"GET /v2/ ', text)),
    }


def echo_guest():
    """The echo test guest, built as the tests build it if it is not yet."""
    path = ROOT / "target" / "guests" / "wasm32-wasip2" / "release" / "echo.wasm"
    if not path.exists():
        harness.run(
            ["cargo", "build", "--release", "--locked", "--target", "wasm32-wasip2", "-p", "echo",
             "--manifest-path", str(ROOT / "guest" / "Cargo.toml")],
            env={"CARGO_TARGET_DIR": str(ROOT / "target" / "guests")},
        )
    return path.read_bytes()


def measure(binaries, rounds):
    work = Path(tempfile.mkdtemp(prefix="mantle-follow-"))
    registry, nodes = None, []
    try:
        registry, port, log = start_registry(work)
        reference = f"oci://127.0.0.1:{port}/{REPO}:stable"
        echo = echo_guest()
        push(binaries, pack(binaries, work, "0", echo), reference)
        started = [start_node(binaries, work, address, reference) for address in NODES]
        nodes = [node for node, _ in started]
        addresses = [address for _, address in started]
        first_answers(addresses, "version 0", time.perf_counter())
        moves = {"config only": [], "new guest": []}
        for round_ in range(1, 2 * rounds + 1):
            kind = "config only" if round_ % 2 else "new guest"
            guest = echo if kind == "config only" else padded(echo, round_)
            bundle = pack(binaries, work, str(round_), guest)
            # The tag moves when the push puts the manifest, its last step.
            push(binaries, bundle, reference)
            moves[kind] += first_answers(addresses, f"version {round_}", time.perf_counter())
        time.sleep(2)
        before = log.stat().st_size
        time.sleep(IDLE_SECONDS)
        idle = requests_in(log, before, log.stat().st_size)
        per_node_minute = {kind: n / len(NODES) / (IDLE_SECONDS / 60) for kind, n in idle.items()}
        return {"moves": moves, "idle_per_node_minute": per_node_minute}
    finally:
        for node in nodes:
            node.terminate()
            node.wait(timeout=30)
        if registry:
            registry.terminate()
            registry.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def section(results, rounds):
    lines = [
        SUBSECTION,
        "",
        f"Three nodes (`mantle serve` on 127.0.0.1, .2 and .3) follow one tag at `interval_ms = {INTERVAL_MS}`",
        "on a `docker-registry` on loopback (`bench/follow.py`). The bundle is the echo guest greeting",
        "with its version, and EfficientNet-Lite0 riding along. Each move pushes a new version with",
        "`mantle push`; the time runs from the push's end (the manifest put, its last step, moves the tag)",
        "to each node's first answer from the new version, its client polling every 5 ms. \"config only\"",
        "changes `mantle.toml` (the node fetches two small blobs and compiles nothing); \"new guest\"",
        "changes the component too (the node fetches it and compiles it). A poll waits half the interval",
        f"on average. {rounds} moves of each kind, 3 nodes each. Seconds.",
        "",
        "| move | median | best | worst |",
        "| --- | --- | --- | --- |",
    ]
    for kind, times in results["moves"].items():
        lines.append(f"| {kind} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    idle = results["idle_per_node_minute"]
    lines += [
        "",
        f"Registry requests per node per minute while the tag stays put, counted in the registry's access",
        f"log over {IDLE_SECONDS} s: {idle['all']:.1f}, of which {idle['head']:.1f} HEADs of the manifest (one a poll)",
        f"and {idle['probe']:.1f} `GET /v2/`: against a registry that asks for no credentials, `oci-client`",
        "holds no token and probes `/v2/` again before each request. With credentials it keeps the",
        "basic auth or token it settled on, and a poll is the HEAD alone (seen in the access log of an",
        "htpasswd registry; not measured here).",
        "",
    ]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release")
    parser.add_argument("--rounds", type=int, default=5, help="tag moves of each kind (default: 5)")
    args = parser.parse_args()
    binaries = harness.build(args.profile)
    cpu = json.loads(harness.run([str(binaries / "mantle-bench"), "cpu"], capture_output=True, text=True).stdout)
    heading = harness.SECTION + cpu["description"].replace("; vector features: ", " (") + ")"
    lines = section(measure(binaries, args.rounds), args.rounds)
    print("\n".join(lines))
    harness.splice_subsection(heading, SUBSECTION, "bench/follow.py", cpu, args.profile, lines)


if __name__ == "__main__":
    main()
