#!/usr/bin/env python3
"""Sustained load and overload against a real node. From the repository root:

    python3 bench/load.py [--minutes 10] [--overload-seconds 60]

It builds mantle in release, starts `mantle serve` with the bundled examples
(tenant `demo`, default limits: 8 running, 32 queued, 5 s queue timeout)
and drives image-classify with oha at a fixed request rate, open loop, with
latency corrected for coordinated omission:

  1. capacity: the most requests per second the node completes, closed
     loop at concurrency 8 for 20 s;
  2. sustained: 80% of capacity for --minutes minutes, one oha run per
     minute, recording every minute's statuses and p50/p99 and the node's
     RSS at the end of it;
  3. overload: 3x capacity for --overload-seconds, counting statuses and
     the latency of the requests that were admitted;
  4. recovery: straight after, 50% of capacity for 20 s.

It prints a markdown report (docs/RELIABILITY.md quotes it) and exits
non-zero if any of the acceptance points failed: an unexpected status
(anything but 200 while sustained or recovering, anything but 200/429/503
in overload), RSS growth of 5% or more from the first minute to the last,
or a request that got no answer at all.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402  (the benchmark harness: build, oha, memory)

ROOT = harness.ROOT
SAMPLE = ROOT / harness.SAMPLES["image-classify"]
PATH = "/t/demo/image-classify"


def oha_run(oha, url, seconds, concurrency, rate=None):
    """One oha run: statuses, errors, and latency percentiles in ms, over
    all answers and over the 200s alone."""
    command = [str(oha), "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(concurrency),
               "-m", "POST", "-D", str(SAMPLE), "--stats-success-breakdown"]
    if rate is not None:
        command += ["-q", f"{rate:.1f}", "--latency-correction"]
    report = json.loads(subprocess.run(command + [url], check=True, capture_output=True, text=True).stdout)
    errors = {e: n for e, n in report.get("errorDistribution", {}).items() if e != "aborted due to deadline"}
    succeeded = report.get("latencyPercentilesSuccessful") or report["latencyPercentiles"]
    return {
        "rps": report["summary"]["requestsPerSec"],
        "statuses": {int(code): n for code, n in report.get("statusCodeDistribution", {}).items()},
        "errors": errors,
        "p50": (report["latencyPercentiles"]["p50"] or 0) * 1e3,
        "p99": (report["latencyPercentiles"]["p99"] or 0) * 1e3,
        "ok_p50": (succeeded["p50"] or 0) * 1e3,
        "ok_p99": (succeeded["p99"] or 0) * 1e3,
    }


def describe(statuses):
    return ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())) or "none"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--overload-seconds", type=int, default=60)
    args = parser.parse_args()

    binaries = harness.build("release")
    oha = harness.oha()
    failures = []
    with tempfile.TemporaryDirectory(prefix="mantle-load-") as scratch:
        port = harness.free_port()
        node = subprocess.Popen(
            [str(binaries / "mantle"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", scratch],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            harness.wait_until_serving(port, PATH, SAMPLE.read_bytes(), time.perf_counter())
            url = f"http://127.0.0.1:{port}{PATH}"
            oha_run(oha, url, 5, 8)  # warm-up
            capacity = oha_run(oha, url, 20, 8)["rps"]
            print(f"capacity: {capacity:.1f} req/s", file=sys.stderr)

            sustained = []
            rate = 0.8 * capacity
            for minute in range(args.minutes):
                result = oha_run(oha, url, 60, 32, rate)
                result["rss_mib"] = harness.memory_kib([node.pid], "VmRSS") / 1024
                sustained.append(result)
                print(f"  minute {minute + 1}: {result['rps']:.1f} req/s, p99 {result['p99']:.1f} ms, "
                      f"{describe(result['statuses'])}, RSS {result['rss_mib']:.0f} MiB", file=sys.stderr)

            overload = oha_run(oha, url, args.overload_seconds, 256, 3 * capacity)
            recovery = oha_run(oha, url, 20, 32, 0.5 * capacity)
            peak_mib = harness.memory_kib([node.pid], "VmHWM") / 1024
        finally:
            node.terminate()
            node.wait(timeout=30)

    for phase, runs, allowed in (("sustained", sustained, {200}), ("overload", [overload], {200, 429, 503}),
                                 ("recovery", [recovery], {200})):
        for result in runs:
            unexpected = {c: n for c, n in result["statuses"].items() if c not in allowed}
            if unexpected or result["errors"]:
                failures.append(f"{phase}: unexpected {describe(unexpected)}, errors {result['errors']}")
    growth = sustained[-1]["rss_mib"] / sustained[0]["rss_mib"] - 1
    if growth >= 0.05:
        failures.append(f"RSS grew {growth:.1%} from the first minute to the last")

    lines = [
        f"Capacity (closed loop, concurrency 8, 20 s): **{capacity:.1f} req/s**.",
        "",
        f"Sustained at {0.8 * capacity:.1f} req/s (80%), open loop, {args.minutes} one-minute runs:",
        "",
        "| minute | req/s | p50 ms | p99 ms | statuses | RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for minute, r in enumerate(sustained, 1):
        lines.append(f"| {minute} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {describe(r['statuses'])} "
                     f"| {r['rss_mib']:.0f} |")
    p99s = [r["p99"] for r in sustained]
    lines += [
        "",
        f"p99 across minutes: {min(p99s):.1f} to {max(p99s):.1f} ms. RSS from minute 1 to minute {args.minutes}: "
        f"{sustained[0]['rss_mib']:.0f} to {sustained[-1]['rss_mib']:.0f} MiB ({growth:+.1%}); peak {peak_mib:.0f} MiB.",
        "",
        "| phase | offered req/s | answered req/s | statuses | p99 all ms | p50 / p99 of 200s ms |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| overload, {args.overload_seconds} s | {3 * capacity:.1f} | {overload['rps']:.1f} | "
        f"{describe(overload['statuses'])} | {overload['p99']:.1f} | {overload['ok_p50']:.1f} / {overload['ok_p99']:.1f} |",
        f"| recovery, 20 s | {0.5 * capacity:.1f} | {recovery['rps']:.1f} | {describe(recovery['statuses'])} | "
        f"{recovery['p99']:.1f} | {recovery['ok_p50']:.1f} / {recovery['ok_p99']:.1f} |",
        "",
        "Result: " + ("every point held." if not failures else "FAILED: " + "; ".join(failures)),
    ]
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
