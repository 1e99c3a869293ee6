"""Two audits compared: what changed from a baseline audit to the current one.

Both audits are aggregated with the same report settings (the same caption
groups, seeds and thresholds), each through its own manifest, part by part, so
the comparison is as streaming as the report: it differences aggregates, never
rows. What it reports, each with a 95% interval (``report.confidence``):

* the settings that differ (model, weights, layers, steps, schedule, precision,
  engine results and library versions, data columns) and whether the input is the same, with what
  each difference means for the numbers below (``caveats``);
* the CLIP-score shift: difference of means (Welch's interval from exact
  moments), Cohen's d, and two distribution distances from the fixed score
  histograms (Wasserstein-1 and Kolmogorov-Smirnov, each within one 0.005 bin);
* the status mix: each status's share of rows, its change (Newcombe's hybrid
  score interval) and error kinds not seen in the baseline;
* words whose mean attribution or mean share moved most (Welch intervals from
  per-word sums of squares; both sides need ``compare_min_count`` uses), words
  new or gone;
* shortcut suspects that appeared, vanished, strengthened, weakened or moved:
  the share of a word's pairs whose top patch is in its cell, on both sides;
* caption-group gaps that opened, closed, widened, narrowed or reversed (the
  change of the difference, with a bootstrap interval), and group shares.

A change is a finding when its interval excludes 0 and its size passes the
setting for its kind; findings are ranked like the report's: shortcuts, group
gaps, failed rows, the score, group shares, words.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.report.compare_findings import findings
from pipeline.report.compare_sections import (
    Audit,
    group_section,
    score_section,
    shortcut_section,
    status_section,
    word_section,
)
from pipeline.report.compare_settings import ATTR, settings_section
from pipeline.report.settings import ReportSettings


def compare(cur: Audit, base: Audit, s: ReportSettings) -> tuple[dict[str, Any], pa.Table]:
    """The comparison object of ``report.json`` and the per-word comparison table."""
    st = settings_section(cur, base)
    basis = "share" if ATTR in st["confounds"] else "attr"
    words, table = word_section(cur.agg, base.agg, s, basis)
    c: dict[str, Any] = {
        "current": cur.results, "baseline": base.results,
        "settings": st,
        "score": score_section(cur.agg, base.agg, s),
        "status": status_section(cur.agg, base.agg, s),
        "words": words,
        "shortcuts": shortcut_section(cur, base, s),
        "groups": group_section(cur, base, s),
    }
    c["findings"] = findings(c, s)
    return c, table


__all__ = ["Audit", "compare"]
