"""The curation list, ``flags.parquet``: the pairs a team would review or drop.

One row per flagged pair, joinable with the input by ``id`` (or by ``source``
and ``row``), with every reason it is flagged and what each reason rests on:

* ``shortcut``: the caption holds a shortcut suspect and the pair's top patch
  is in that suspect's cell (the pairs that carry the shortcut, not every pair
  with the word);
* ``low_score``: among the lowest ``report.flags_low_score_share`` of the
  attributed pairs by CLIP score (exactly that many, ties by input position);
* ``not_ok``: the row was not attributed (its status and error).

One streaming pass over the results: failed rows and suspects' pairs are kept
as they come (they are the list), the lowest scores as a running bottom-k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.report.regions import Grid, maps_of, positive_maps
from pipeline.report.space import incidence

COLUMNS = ["id", "source", "row", "status", "error", "score", "tokens", "image_attr",
           "grid_h", "grid_w"]
SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("status", pa.string()),
    ("score", pa.float64()), ("reasons", pa.list_(pa.string())),
    ("evidence", pa.list_(pa.string())), ("suspect_words", pa.list_(pa.string())),
    ("top_cell", pa.int32()), ("score_rank", pa.int64()), ("error", pa.string()),
])
REASONS = ("shortcut", "low_score", "not_ok")


class Flagger:
    """Collects the flagged pairs of one results set, part by part."""

    def __init__(self, suspects: list[dict[str, Any]], grid: Grid | None, rows_ok: int,
                 low_share: float) -> None:
        self.suspects = [p for p in suspects if grid is not None]
        self.index = {p["word"]: i for i, p in enumerate(self.suspects)}
        self.cells = np.array([p["modal_cell"] for p in self.suspects], np.int64)
        self.grid = grid
        self.rows_ok = rows_ok
        self.k = min(rows_ok, math.ceil(low_share * rows_ok)) if low_share > 0 else 0
        self.bad: list[dict[str, Any]] = []
        self.hits: dict[tuple[int, int], dict[str, Any]] = {}  # (part, row): shortcut rows
        self.low = {k: np.empty(0, t) for k, t in (("score", np.float64), ("part", np.int64),
                                                    ("row", np.int64))}
        self.low_rows: dict[tuple[int, int], dict[str, Any]] = {}

    def consume(self, tables: Iterable[pa.Table]) -> Flagger:
        for part, table in enumerate(tables):
            self.add(table, part)
        return self

    def add(self, table: pa.Table, part: int) -> None:
        status = table.column("status")
        ok = pc.equal(status, "ok").fill_null(False).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~ok)
        if bad.size:
            rows = table.select(["id", "source", "row", "status", "error"]).take(pa.array(bad))
            for i, r in zip(bad.tolist(), rows.to_pylist()):
                r["_key"] = (part, i)
                self.bad.append(r)
        okr = np.flatnonzero(ok)
        if okr.size == 0:
            return
        t = table.take(pa.array(okr))
        score = t.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        if self.k:
            self._low(t, score, okr, part)
        if self.suspects and self.grid is not None:
            self._shortcuts(t, score, okr, part)

    def _low(self, t: pa.Table, score: np.ndarray, okr: np.ndarray, part: int) -> None:
        fin = np.flatnonzero(np.isfinite(score))
        cand = fin[np.lexsort((okr[fin], score[fin]))][: self.k]
        cat = {"score": np.concatenate([self.low["score"], score[cand]]),
               "part": np.concatenate([self.low["part"], np.full(cand.size, part, np.int64)]),
               "row": np.concatenate([self.low["row"], okr[cand].astype(np.int64)])}
        keep = np.lexsort((cat["row"], cat["part"], cat["score"]))[: self.k]
        self.low = {k: v[keep] for k, v in cat.items()}
        kept = set(zip(self.low["part"].tolist(), self.low["row"].tolist()))
        self.low_rows = {key: r for key, r in self.low_rows.items() if key in kept}
        rows = t.select(["id", "source", "row", "status", "error"]).take(pa.array(cand))
        for i, r in zip(cand.tolist(), rows.to_pylist()):
            key = (part, int(okr[i]))
            if key in kept:
                r["score"] = float(score[i])
                self.low_rows[key] = r

    def _shortcuts(self, t: pa.Table, score: np.ndarray, okr: np.ndarray, part: int) -> None:
        maps, valid = maps_of(t, self.grid)
        _, top, usable = positive_maps(maps)
        t_rows = np.flatnonzero(valid)[usable]
        if t_rows.size == 0:
            return
        top = top[usable]
        mi, wi = incidence(t.column("tokens").take(pa.array(t_rows, pa.int64())), self.index)
        there = top[mi] == self.cells[wi]
        if not there.any():
            return
        mi, wi = mi[there], wi[there]
        rows = t.select(["id", "source", "row", "status", "error"]).take(
            pa.array(t_rows[np.unique(mi)], pa.int64())).to_pylist()
        for r, m in zip(rows, np.unique(mi).tolist()):
            i = int(t_rows[m])
            r.update(score=float(score[i]), top_cell=int(top[m]),
                     words=[self.suspects[w]["word"] for w in wi[mi == m].tolist()])
            self.hits[(part, int(okr[i]))] = r

    def table(self) -> tuple[pa.Table, dict[str, Any]]:
        """``flags.parquet``'s table (input order: part, then row) and its summary."""
        rank = {(int(p), int(r)): i + 1 for i, (p, r) in
                enumerate(zip(self.low["part"], self.low["row"]))}
        threshold = float(self.low["score"][-1]) if self.low["score"].size else None
        out: dict[tuple[int, int], dict[str, Any]] = {}
        for key, r in self.hits.items():
            cell = self.grid.name(r["top_cell"]) if self.grid is not None else ""
            ev = []
            for w in r["words"]:
                p = self.suspects[self.index[w]]
                ev.append(f"caption has shortcut suspect \u201c{w}\u201d, whose pairs peak in "
                          f"cell {cell} ({p['consistency']:.0%} of {p['pairs']}; all pairs "
                          f"{p['baseline']:.0%}); this pair's top patch is there")
            out[key] = {**r, "reasons": ["shortcut"], "evidence": ["; ".join(ev)],
                        "suspect_words": r["words"], "score_rank": None}
        share = self.k / self.rows_ok if self.rows_ok else 0.0
        for key, r in self.low_rows.items():
            ev = (f"score {r['score']:.4g}: rank {rank[key]} of {self.rows_ok} attributed pairs, "
                  f"among the lowest {self.k} ({share:.1%}; at most {threshold:.4g})")
            e = out.setdefault(key, {**r, "reasons": [], "evidence": [], "suspect_words": [],
                                     "top_cell": None})
            e["reasons"].append("low_score")
            e["evidence"].append(ev)
            e["score_rank"] = rank[key]
        for r in self.bad:
            msg = r["error"] if r["error"] else "no error message"
            out[r["_key"]] = {**r, "score": None, "reasons": ["not_ok"],
                              "evidence": [f"status {r['status']}: {msg}"], "suspect_words": [],
                              "top_cell": None, "score_rank": None}
        rows = [out[k] for k in sorted(out)]
        table = pa.Table.from_pylist([{f: r.get(f) for f in SCHEMA.names} for r in rows],
                                     schema=SCHEMA)
        by_reason = {name: sum(name in r["reasons"] for r in rows) for name in REASONS}
        return table, {"rows": len(rows), "by_reason": by_reason, "low_score_pairs": self.k,
                       "low_score_share": share, "low_score_max": threshold,
                       "suspects": [p["word"] for p in self.suspects]}
