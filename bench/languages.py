"""What a guest's language costs: the text-embed pipeline as the Rust
example, the Python example (built with componentize-py from PyPI) and the
JavaScript example (built with componentize-js from npm), on one runtime
with the same model (`mantle-bench languages`):

- compile time and compiled size of each component, and the data its
  memories start from;
- the resident memory the process gains as it loads each module, and over
  its first three requests;
- milliseconds per request on the same text, and on an empty body, which
  each refuses right after it starts: the cost of an instance and a call.
  The three take turns request by request, and the harness checks that
  every embedding is within 1e-6 of the Rust example's.

    python3 bench/languages.py [--runs 200]

Run alone, it replaces its subsection of this CPU's section of
docs/BENCHMARKS.md; `bench/run.py` runs it as one of its steps.
"""

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import run as harness

SUBSECTION = "### Guests in Python and JavaScript"
ROOT = harness.ROOT
TARGET = ROOT / "target"


def python_component(out):
    """The Python text-embed, built with the componentize-py of
    guest/python/requirements.txt, in a virtual environment under target/."""
    requirements = ROOT / "guest" / "python" / "requirements.txt"
    home = TARGET / "bench-componentize-py"
    python = home / "bin" / "python"
    stamp = home / "mantle-requirements.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == requirements.read_text()):
        harness.run([sys.executable, "-m", "venv", "--clear", str(home)])
        harness.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)])
        stamp.write_text(requirements.read_text())
    harness.run([
        str(home / "bin" / "componentize-py"), "-d", "wit", "-w", "guest", "componentize", "app",
        "-p", "guest/python/examples/text-embed", "-p", "guest/python", "-p", "models/minilm-l6",
        "-o", str(out),
    ], capture_output=True)


def javascript_component(out):
    """The JavaScript text-embed, built by its build.mjs with the packages
    of guest/js/package-lock.json, installed under target/."""
    tools = TARGET / "bench-componentize-js"
    lock = (ROOT / "guest" / "js" / "package-lock.json").read_text()
    stamp = tools / "mantle-lockfile.json"
    if not ((tools / "node_modules").exists() and stamp.exists() and stamp.read_text() == lock):
        tools.mkdir(parents=True, exist_ok=True)
        for name in ["package.json", "package-lock.json"]:
            shutil.copy(ROOT / "guest" / "js" / name, tools / name)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], check=True, cwd=tools)
        stamp.write_text(lock)
    sources = tools / "src"
    shutil.rmtree(sources, ignore_errors=True)
    shutil.copytree(ROOT / "guest" / "js", sources, ignore=shutil.ignore_patterns("node_modules"))
    harness.run([
        "node", str(sources / "examples" / "text-embed" / "build.mjs"), "-o", str(out),
        "--wit", str(ROOT / "wit"), "--vocab", str(ROOT / "models" / "minilm-l6" / "vocab.txt"),
    ], capture_output=True)


def measure(binaries, runs):
    with tempfile.TemporaryDirectory(prefix="mantle-bench-") as scratch:
        scratch = Path(scratch)
        python, javascript, text = scratch / "python.wasm", scratch / "javascript.wasm", scratch / "text.txt"
        print("languages: building the Python and JavaScript examples", file=sys.stderr)
        python_component(python)
        javascript_component(javascript)
        text.write_bytes(harness.TEXT_SAMPLE)
        command = [
            str(binaries / "mantle-bench"), "languages", "models", str(runs), str(text), str(binaries / "mantle"),
            f"python={python}", f"javascript={javascript}",
        ]
        return json.loads(harness.run(command, capture_output=True, text=True).stdout)


def mib(value):
    return "—" if value is None else f"{value / 2**20:.1f}"


def section(results, runs, alone=False):
    rows = []
    rust = statistics.median(results["rust"]["request_ms"])
    for name, label in [("rust", "Rust"), ("python", "Python"), ("javascript", "JavaScript")]:
        r = results[name]
        request, refuse = r["request_ms"], r["refuse_ms"]
        rows.append(
            f"| {label} | {r['component_bytes'] / 2**20:.1f} | {r['compile_ms'] / 1000:.1f} "
            f"| {r['compiled_bytes'] / 2**20:.1f} | {r['data_bytes'] / 2**20:.1f} "
            f"| {mib(r.get('resident_loaded_bytes'))} | {mib(r['resident_serving_bytes'])} "
            f"| {statistics.median(refuse):.2f} | {harness.percentile(refuse, 99):.2f} "
            f"| {statistics.median(request):.2f} | {harness.percentile(request, 99):.2f} "
            f"| {statistics.median(request) - rust:+.2f} |"
        )
    def split(name):
        r = results[name]
        empty = statistics.median(r["refuse_ms"])
        return empty, statistics.median(r["request_ms"]) - empty

    rust_empty, rust_work = split("rust")
    where = []
    for name, label in [("python", "Python"), ("javascript", "JavaScript")]:
        empty, work = split(name)
        where.append(
            f"{label}'s {statistics.median(results[name]['request_ms']) - rust:+.1f} ms: {empty - rust_empty:+.1f} in "
            f"starting an instance and calling it (the empty body), {work - rust_work:+.1f} in the pipeline's own code."
        )
    return [
        SUBSECTION,
        "",
        *([f"Measured by `bench/languages.py` alone on {datetime.date.today().isoformat()}."] if alone else []),
        "The text-embed pipeline (WordPiece, MiniLM-L6 through `wasi:nn`, mean pooling) as the Rust",
        "example, the Python example (componentize-py, CPython inside) and the JavaScript example",
        "(componentize-js, StarlingMonkey inside), on one runtime with the same model",
        "(`bench/languages.py`). Compile: `mantle compile-guest`'s work in process, once. Data: the",
        "bytes of data segments the component's memories start from, mapped copy-on-write per",
        "instance. Resident: what the process gained loading the module as a node does (compiled by",
        "`mantle compile-guest` into the code cache, and the code mapped from there; the Rust",
        "example's was loaded, and pre-initialized, with the node), and over its first three",
        "requests, code pages faulted in included. Then",
        f"{runs} rounds after 3 to warm up, the three taking turns request by request: the text",
        f"{harness.TEXT_SAMPLE.decode()!r}, and an empty body, which each refuses (400) right after",
        "it starts: the cost of an instance and a call. Every embedding is checked against the",
        "Rust example's (within 1e-6). Sizes in MiB, times in ms.",
        "",
        "| guest | component | compile (s) | compiled | data | resident, loaded | resident, serving "
        "| empty body p50 | p99 | text p50 | p99 | text p50 − Rust |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Where each language's time per request goes, against Rust's: " + " ".join(where),
        "`docs/PERF-LOG.md` (\"Python and JavaScript guests: where the time goes\") breaks the",
        "pipeline's part down from inside the Python guest.",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    binaries = harness.build(args.profile)
    cpu = json.loads(harness.run([str(binaries / "mantle-bench"), "cpu"], capture_output=True, text=True).stdout)
    lines = section(measure(binaries, args.runs), args.runs, alone=True)
    print("\n".join(lines))
    heading = harness.SECTION + cpu["description"].replace("; vector features: ", " (") + ")"
    harness.splice_subsection(heading, SUBSECTION, "bench/languages.py", cpu, args.profile, lines)


if __name__ == "__main__":
    main()
