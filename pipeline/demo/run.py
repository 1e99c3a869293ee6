"""`make demo`: the main job end to end on an embedded default, offline, in minutes.

1. writes the synthetic demo dataset (captioned scenes with ground truth and a
   planted shortcut) as Parquet shards, once;
2. starts a real S3 endpoint on 127.0.0.1 (moto in server mode) and uploads them;
3. runs ``nibt-audit`` over ``s3://`` with the shipped demo model on a local Ray,
   building the report at the end;
4. copies the results and the report to ``demo-output/`` and stops the endpoint;
5. prints where everything is and the headline numbers.

Running it again reuses what is done: the dataset is kept, and the previous
results are uploaded back first, so the audit skips every committed task.

    python -m pipeline.demo.run [--pairs 2000] [--shards 8] [--out demo-output]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.devtools.s3local import LOCAL_S3_ENV, local_s3

BUCKET = "demo"


def _dataset(data_dir: Path, pairs: int, shards: int, seed: int) -> list[Path]:
    """The demo shards, written unless the same ones are already there."""
    from pipeline.demo.scenes import write_shards

    stamp = data_dir / "_dataset.json"
    want = {"pairs": pairs, "shards": shards, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return sorted(data_dir.glob("*.parquet"))
    for old in data_dir.glob("*.parquet"):
        old.unlink()
    t = time.time()
    paths = write_shards(data_dir, pairs, shards, seed)
    stamp.write_text(json.dumps(want))
    print(f"[demo] wrote {pairs} pairs in {shards} shards to {data_dir} ({time.time() - t:.0f}s)")
    return paths


def _audit(endpoint: str, output: str, log_dir: Path, extra: list[str]) -> tuple[int, dict]:
    args = [sys.executable, "-m", "pipeline", f"input=s3://{BUCKET}/pairs/", f"output={output}",
            "model=demo", "data=demo", "storage=s3", f"storage.endpoint_url={endpoint}",
            "report.enabled=true", *extra]
    print("[demo] nibt-audit " + " ".join(args[3:]), flush=True)
    env = dict(os.environ, **LOCAL_S3_ENV, NIBT_LOG_DIR=str(log_dir))
    r = subprocess.run(args, stdout=subprocess.PIPE, text=True, env=env)
    summary = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, summary


def headline(summary: dict, report: dict | None) -> list[str]:
    """The few numbers a new user should see first."""
    lines = [
        f"rows {summary.get('rows_out')} of {summary.get('rows_in')}, statuses "
        f"{summary.get('status_counts')}, tasks run {summary.get('tasks_run')} / skipped "
        f"{summary.get('tasks_skipped')}, {summary.get('pairs_per_second')} pairs/s",
    ]
    if report:
        for f in report.get("findings", [])[:5]:
            lines.append(f"finding: {f.get('text', f)}")
        suspects = report.get("space", {}).get("suspects", [])
        if suspects:
            lines.append(f"top shortcut suspect: {suspects[0].get('word')!r} (planted: 'vintage')")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--data", default="demo-data", help="where the dataset is written")
    ap.add_argument("--out", default="demo-output", help="where results and report are copied")
    ap.add_argument("--override", action="append", default=[], help="extra nibt-audit overrides")
    args = ap.parse_args(argv)
    os.environ.update(LOCAL_S3_ENV)
    os.environ.setdefault("AWS_CONFIG_FILE", os.devnull)
    os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    import s3fs

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = _dataset(Path(args.data).resolve(), args.pairs, args.shards, args.seed)
    t0 = time.time()
    with local_s3() as endpoint:
        print(f"[demo] S3 endpoint (moto) on {endpoint}")
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir(BUCKET)
        for p in paths:
            fs.put(str(p), f"{BUCKET}/pairs/{p.name}")
        previous = out / "audit"
        if (previous / "parts").is_dir():  # resume: what an earlier run committed
            fs.put(f"{previous}/parts/", f"{BUCKET}/audit/parts/", recursive=True)
        code, summary = _audit(endpoint, f"s3://{BUCKET}/audit", out / "logs", args.override)
        if fs.exists(f"{BUCKET}/audit"):
            previous.mkdir(exist_ok=True)
            fs.get(f"{BUCKET}/audit/", f"{previous}/", recursive=True)
    report_json = previous / "report" / "report.json"
    report = json.loads(report_json.read_text()) if report_json.exists() else None
    if report:
        (out / "report.html").write_bytes((previous / "report" / "report.html").read_bytes())
    print(f"\n[demo] nibt-audit exit code {code} in {time.time() - t0:.0f}s")
    print(f"[demo] results: {previous}/ (_manifest.json, parts/, _summary.json)")
    if report:
        print(f"[demo] report:  {out / 'report.html'} (all of it: {previous / 'report'}/)")
    for line in headline(summary, report):
        print(f"[demo] {line}")
    return code


if __name__ == "__main__":
    sys.exit(main())
