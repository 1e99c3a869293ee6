"""Run benchmark sections and print their figures as one JSON document.

    python -m benchmarks [engine] [job] ...          (default: all sections)
    python -m benchmarks --out bench-results decode  (also bench-results/<section>.json)

Every section runs in a fresh process and reports each figure beside its peer from
the same run. Each result carries when, where and how it was made (``machine``),
so a table drawn from it (``python -m benchmarks.tables``) can say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from benchmarks.common import run_child
from pipeline.devtools.machine import machine

#: Seconds a section may run (the report's grid up to 50 million rows takes over an hour on 2 cores).
TIMEOUT_S = {"report": 4 * 3600}
SECTIONS = ("engine", "flops", "completeness", "models", "job", "scale", "overlap", "decode",
            "decode_job", "decoders", "report", "controlplane", "commitlog", "webdataset")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--out", help="also write <out>/<section>.json")
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    names = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; have {list(SECTIONS)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        where = machine(f"python -m benchmarks {name}")
        # each section in a fresh process: no model, allocator or thread-pool state
        # left by one section can tilt the next one's figures
        results[name] = run_child(
            f"import json; from benchmarks.{name} import run; print(json.dumps(run()))",
            timeout=TIMEOUT_S.get(name, 3600),
        )
        results[name]["machine"] = where
        print(json.dumps({name: results[name]}, indent=2), file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"{name}.json").write_text(
                json.dumps(results[name], indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
