"""Run benchmark sections and print their figures as one JSON document.

    python -m tests.bench [engine] [job] ...   (default: all sections)
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import warnings

SECTIONS = ("engine", "models", "job", "report")


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
        results[name] = importlib.import_module(f"tests.bench.{name}").run()
        print(json.dumps({name: results[name]}, indent=2), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
