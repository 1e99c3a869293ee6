"""Run benchmark sections and print their figures as one JSON document.

    python -m benchmarks [engine] [job] ...   (default: all sections)
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

from benchmarks.common import run_child

SECTIONS = ("engine", "models", "job", "scale", "overlap", "decode", "decode_job", "decoders",
            "report")


def main(argv: list[str]) -> int:
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    names = argv or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; have {list(SECTIONS)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        # each section in a fresh process: no model, allocator or thread-pool state
        # left by one section can tilt the next one's figures
        results[name] = run_child(
            f"import json; from benchmarks.{name} import run; print(json.dumps(run()))",
            timeout=3600,
        )
        print(json.dumps({name: results[name]}, indent=2), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
