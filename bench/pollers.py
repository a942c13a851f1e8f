"""How many nodes one registry can serve tag polls to: many lightweight
pollers against the real registry on this machine (Debian's
`docker-registry`, the CNCF distribution server), each on its own
keep-alive connection as a node keeps one, sending what a node's poll sends
(a `GET /v2/` probe, then a HEAD of the manifest with the manifest media
types in `Accept`; an anonymous node's `oci-client` probes before each
request, one with credentials does not: `--no-probe`) every interval with
±10% jitter. The number of pollers grows until the registry's
latency degrades or it falls behind the offered rate.

A poller here stands for one node: with `--interval 1`, N pollers offer N
polls a second, what N × 30 nodes at the default 30 s interval offer. The
client's own CPU time is reported beside the figures, so that a limit of
the client is not read as one of the registry.

    python3 bench/pollers.py [--binaries target/release] [--interval 1]
        [--seconds 10] [--levels 100,200,...] [--no-probe]
"""

import argparse
import asyncio
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import follow
import run as harness

REPOSITORY = "acme/greeter"
TAG = "stable"
ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


def push_small_bundle(binaries, work, port):
    """A bundle with one small guest, pushed to the tag the pollers poll."""
    directory = work / "greeter"
    directory.mkdir()
    wasm = harness.ROOT / "target" / "guests" / "wasm32-wasip2" / "release" / "echo.wasm"
    (directory / "greet.wasm").write_bytes(wasm.read_bytes())
    (directory / "mantle.toml").write_text(
        '[bundle]\nname = "greeter"\nversion = "1"\n\n[[module]]\nid = "greet"\nfile = "greet.wasm"\n'
    )
    out = work / "greeter.mbundle"
    harness.run([str(binaries / "mantle"), "bundle", str(directory), "-o", str(out)], capture_output=True)
    follow.push(binaries, out, f"oci://127.0.0.1:{port}/{REPOSITORY}:{TAG}")


async def probe(reader, writer, port):
    """`GET /v2/`, its head and its body read; whether it answered 200."""
    writer.write(f"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: mantle-bench-poller\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await asyncio.wait_for(reader.readexactly(length), timeout=10)
    return b" 200 " in head.split(b"\r\n", 1)[0]


async def poller(port, interval, until, latencies, failures, start_at, probing):
    request = (
        f"HEAD /v2/{REPOSITORY}/manifests/{TAG} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Accept: {ACCEPT}\r\nUser-Agent: mantle-bench-poller\r\n\r\n"
    ).encode()
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    reader = writer = None
    next_poll = time.perf_counter()
    while next_poll < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = time.perf_counter()
            probed = not probing or await probe(reader, writer, port)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            took = time.perf_counter() - sent
            if probed and b" 200 " in head.split(b"\r\n", 1)[0] and b"docker-content-digest" in head.lower():
                latencies.append(took)
            else:
                failures.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            failures.append(type(e).__name__)
            writer = None
        next_poll += interval * random.uniform(0.9, 1.1)
        await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
    if writer is not None:
        writer.close()


async def level(port, pollers, interval, seconds, probing):
    latencies, failures = [], []
    begin = time.perf_counter() + 0.5
    until = begin + seconds
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [
        poller(port, interval, until, latencies, failures, begin + random.uniform(0, interval), probing)
        for _ in range(pollers)
    ]
    await asyncio.gather(*tasks)
    used = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime) / (seconds + interval)
    return latencies, failures, client_cpu


def registry_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binaries", type=Path, default=harness.ROOT / "target" / "release")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--levels", default="100,200,300,400,500,600,800,1000,1500,2000")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="polls are the HEAD alone")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        registry, port, _ = follow.start_registry(work)
        try:
            push_small_bundle(args.binaries, work, port)
            print(f"registry: docker-registry on 127.0.0.1:{port}; CPU: {harness.machine()}")
            poll = "GET /v2/ then HEAD" if args.probe else "HEAD"
            print(f"each poller: one keep-alive connection, a poll ({poll}) every {args.interval:g} s ±10%\n")
            print("| pollers | offered polls/s | answered polls/s | poll p50 ms | poll p99 ms | failed | registry CPU | client CPU |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            baseline = None
            for pollers in [int(n) for n in args.levels.split(",")]:
                before = registry_cpu(registry.pid)
                latencies, failures, client_cpu = asyncio.run(
                    level(port, pollers, args.interval, args.seconds, args.probe)
                )
                spent = registry_cpu(registry.pid) - before
                answered = len(latencies) / args.seconds
                latencies.sort()
                p50 = statistics.median(latencies) * 1e3 if latencies else float("nan")
                p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e3 if latencies else float("nan")
                offered = pollers / args.interval
                print(
                    f"| {pollers} | {offered:.0f} | {answered:.0f} | {p50:.2f} | {p99:.2f} | {len(failures)} "
                    f"| {spent / (args.seconds + args.interval):.0%} | {client_cpu:.0%} |",
                    flush=True,
                )
                baseline = baseline or p99
                if p99 > 10 * baseline or answered < 0.9 * offered:
                    print(f"\nlatency degraded at {pollers} pollers (p99 {p99:.1f} ms against {baseline:.1f} ms at first)")
                    break
        finally:
            registry.terminate()
            registry.wait()


if __name__ == "__main__":
    main()
