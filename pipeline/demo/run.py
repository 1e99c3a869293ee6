"""`make demo`: the main job end to end on an embedded default, offline, in minutes.

1. writes the synthetic demo dataset (captioned scenes with ground truth, a
   planted shortcut, and a fifth of the captions naming colours with words the
   demo model never saw: a planted caption-group gap) as Parquet shards, once;
2. starts a real S3 endpoint on 127.0.0.1 (moto in server mode) and uploads them;
3. runs ``nibt-audit`` over ``s3://`` with the shipped demo model on a local Ray,
   building the report at the end (caption groups: ``report/groups=[colour_words]``);
4. copies the results and the report to ``demo-output/`` and stops the endpoint;
5. prints where everything is and the headline numbers.

``--compare`` (``make demo-compare``) adds a second night: the same scenes after
a supplier stopped watermarking its "vintage" photos (the planted change), audited
and compared with the first night by ``nibt-report ... baseline=``; the
comparison's first finding is that change. Results in ``demo-output/night2/``,
the comparison in ``demo-output/compare.html``.

Running it again reuses what is done: the dataset is kept, and the previous
results are uploaded back first, so the audit skips every committed task.

    python -m pipeline.demo.run [--pairs 2000] [--shards 8] [--out demo-output] [--compare]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.demo.scenes import Settings
from pipeline.devtools.s3local import LOCAL_S3_ENV, local_s3

BUCKET = "demo"
#: The demo's dataset: the generator's defaults plus the planted wording gap.
NIGHT1 = Settings(fancy_rate=0.2)
#: The second night: the same scenes, the shortcut's mark gone from the "vintage" photos.
NIGHT2 = dataclasses.replace(NIGHT1, mark_rate_with_word=0.0)
#: The demo's caption groups (conf/report/groups/colour_words.yaml).
GROUPS = "report/groups=[colour_words]"


def _dataset(data_dir: Path, pairs: int, shards: int, seed: int,
             settings: Settings = NIGHT1) -> list[Path]:
    """The demo shards, written unless the same ones are already there."""
    from pipeline.demo.scenes import write_shards

    stamp = data_dir / "_dataset.json"
    want = json.loads(json.dumps({"pairs": pairs, "shards": shards, "seed": seed,
                                  "settings": dataclasses.asdict(settings)}))
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return sorted(data_dir.glob("*.parquet"))
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("*.parquet"):
        old.unlink()
    t = time.time()
    paths = write_shards(data_dir, pairs, shards, seed, settings)
    stamp.write_text(json.dumps(want))
    print(f"[demo] wrote {pairs} pairs in {shards} shards to {data_dir} ({time.time() - t:.0f}s)")
    return paths


def _run(args: list[str], log_dir: Path) -> tuple[int, dict]:
    """A command with the local endpoint's dummy credentials; (exit code, its JSON stdout)."""
    env = dict(os.environ, **LOCAL_S3_ENV, NIBT_LOG_DIR=str(log_dir))
    r = subprocess.run(args, stdout=subprocess.PIPE, text=True, env=env)
    return r.returncode, last_json(r.stdout)


def last_json(stdout: str) -> dict:
    """The JSON object a command printed last (lines from another source, such as a Ray
    worker's, may come before it); {} when there is none."""
    lines = stdout.splitlines()
    for i in reversed([i for i, line in enumerate(lines) if line.startswith("{")]):
        try:
            out = json.loads("\n".join(lines[i:]))
        except ValueError:
            continue
        return out if isinstance(out, dict) else {}
    return {}


def _audit(endpoint: str, output: str, log_dir: Path, extra: list[str],
           pairs: str = "pairs", report: bool = True) -> tuple[int, dict]:
    args = [sys.executable, "-m", "pipeline", f"input=s3://{BUCKET}/{pairs}/",
            f"output={output}", "model=demo", "data=demo", "storage=s3",
            f"storage.endpoint_url={endpoint}", f"report.enabled={str(report).lower()}", GROUPS,
            *extra]
    print("[demo] nibt-audit " + " ".join(args[3:]), flush=True)
    return _run(args, log_dir)


def _compare(endpoint: str, results: str, baseline: str, output: str, log_dir: Path,
             extra: list[str]) -> tuple[int, dict]:
    """``nibt-report`` of night 2 against night 1, with the report settings the audits had
    (the ``report.`` overrides among ``extra``)."""
    args = [sys.executable, "-m", "pipeline.cli.report", f"results={results}",
            f"baseline={baseline}", f"output={output}", "storage=s3",
            f"storage.endpoint_url={endpoint}", GROUPS,
            *[o for o in extra if o.startswith(("report.", "report/"))]]
    print("[demo] nibt-report " + " ".join(args[3:]), flush=True)
    return _run(args, log_dir)


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


def _restore(fs, local: Path, remote: str) -> None:
    """Upload what an earlier run committed, and its record (``_ledger/``), so the audit
    skips it."""
    for name in ("parts", "_ledger"):
        if (local / name).is_dir():
            fs.put(f"{local}/{name}/", f"{remote}/{name}/", recursive=True)


def _fetch(fs, remote: str, local: Path) -> None:
    if fs.exists(remote):
        local.mkdir(parents=True, exist_ok=True)
        fs.get(f"{remote}/", f"{local}/", recursive=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--data", default="demo-data", help="where the dataset is written")
    ap.add_argument("--out", default="demo-output", help="where results and report are copied")
    ap.add_argument("--override", action="append", default=[],
                    help="extra nibt-audit overrides (report.* ones apply to the comparison too)")
    ap.add_argument("--compare", action="store_true",
                    help="also audit a second night (the watermark gone) and compare it with "
                         "the first (make demo-compare)")
    args = ap.parse_args(argv)
    os.environ.update(LOCAL_S3_ENV)
    os.environ.setdefault("AWS_CONFIG_FILE", os.devnull)
    os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    import s3fs

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    paths = _dataset(data, args.pairs, args.shards, args.seed)
    night2 = (_dataset(data.with_name(data.name + "-night2"), args.pairs, args.shards, args.seed,
                       NIGHT2) if args.compare else [])
    t0 = time.time()
    previous, later = out / "audit", out / "night2" / "audit"
    comparison: dict = {}
    code2 = compare_code = 0
    with local_s3() as endpoint:
        print(f"[demo] S3 endpoint (moto) on {endpoint}")
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir(BUCKET)
        for p in paths:
            fs.put(str(p), f"{BUCKET}/pairs/{p.name}")
        _restore(fs, previous, f"{BUCKET}/audit")
        code, summary = _audit(endpoint, f"s3://{BUCKET}/audit", out / "logs", args.override)
        _fetch(fs, f"{BUCKET}/audit", previous)
        if args.compare:
            for p in night2:
                fs.put(str(p), f"{BUCKET}/pairs-night2/{p.name}")
            _restore(fs, later, f"{BUCKET}/audit-night2")
            code2, summary2 = _audit(endpoint, f"s3://{BUCKET}/audit-night2", out / "logs",
                                     args.override, pairs="pairs-night2", report=False)
            _fetch(fs, f"{BUCKET}/audit-night2", later)
            if code == 0 and code2 == 0:
                compare_code, comparison = _compare(
                    endpoint, f"s3://{BUCKET}/audit-night2", f"s3://{BUCKET}/audit",
                    f"s3://{BUCKET}/compare", out / "logs", args.override)
                _fetch(fs, f"{BUCKET}/compare", out / "compare")
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
    if args.compare:
        page = out / "compare" / "report.html"
        if page.exists():
            (out / "compare.html").write_bytes(page.read_bytes())
        print(f"\n[demo] night 2 (the watermark gone): nibt-audit exit code {code2}, "
              f"results {later}/")
        print(f"[demo] comparison: {out / 'compare.html'} (exit code {compare_code}; "
              f"all of it: {out / 'compare'}/)")
        for line in (comparison.get("changes") or [])[:5]:
            print(f"[demo] change: {line}")
    return code or code2 or compare_code


if __name__ == "__main__":
    sys.exit(main())
