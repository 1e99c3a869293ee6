"""The comparison's findings: the changes worth a reviewer's attention, as sentences, ranked
like the report's (shortcuts, group gaps, failed rows, the score, group shares, words)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.report.compare_settings import ATTR, SCORE, STATUS
from pipeline.report.formats import fmt, pct, pts
from pipeline.report.settings import ReportSettings

#: Findings in this order (each kind by size).
KIND_ORDER = ("shortcut", "group_gap", "status", "score", "group_share", "word")

#: One candidate finding: kind, size (its rank within the kind), change, anchor, text, and
#: which numbers it rests on (SCORE, STATUS, ATTR; None: none a setting changes).
Lead = tuple[str, float, str, str, str, "str | None"]


def _shortcut_leads(c: dict[str, Any]) -> Iterator[Lead]:
    for i, e in enumerate(c["shortcuts"]["words"]):
        if e["change"] == "unchanged":
            continue
        w, cell = e["word"], e["cell_name"]
        was = (f"baseline: {pct(e['baseline_share'], '.0%')} of its {e['baseline_pairs']} pairs"
               if e["baseline_pairs"] else "the baseline has no pairs with it")
        now = (f"{pct(e['share'], '.0%')} of its {e['pairs']} pairs" if e["pairs"]
               else "no pairs with it now")
        ci = (f"; {pts(e['diff'])} points [{pts(e['ci_low'])}, {pts(e['ci_high'])}]"
              if e["diff"] is not None else "")
        text = {
            "appeared": f"New shortcut suspect \u201c{w}\u201d: the top patch of {now} is in "
                        f"cell {cell} ({was}{ci}).",
            "vanished": f"Shortcut suspect \u201c{w}\u201d vanished: the top patch is in cell "
                        f"{cell} for {now} ({was}{ci}).",
            "strengthened": f"Shortcut suspect \u201c{w}\u201d strengthened: top patch in cell "
                            f"{cell} for {now} ({was}{ci}).",
            "weakened": f"Shortcut suspect \u201c{w}\u201d weakened: top patch in cell {cell} "
                        f"for {now} ({was}{ci}).",
            "moved": f"Shortcut suspect \u201c{w}\u201d moved from cell "
                     f"{e.get('baseline_cell_name')} to {cell}.",
        }[e["change"]]
        yield "shortcut", abs(e["diff"] or 1.0), e["change"], f"cmp-shortcut-{i}", text, ATTR


def _gap_leads(c: dict[str, Any]) -> Iterator[Lead]:
    for fi, fam in enumerate(c["groups"]):
        for e in fam["gaps"]:
            if e["what"] == "unchanged":
                continue
            text = (f"{fam['name']}: the gap in {e['label']} between \u201c{e['a']}\u201d and "
                    f"\u201c{e['b']}\u201d {e['what']}: difference {fmt(e['diff'])} "
                    f"[{fmt(e['ci_low'])}, {fmt(e['ci_high'])}], Cohen's d "
                    f"{fmt(e['cohens_d'], '.2f')} "
                    f"(baseline {fmt(e['baseline_diff'])} [{fmt(e['baseline_ci_low'])}, "
                    f"{fmt(e['baseline_ci_high'])}], d {fmt(e['baseline_cohens_d'], '.2f')}); "
                    f"change {fmt(e['change'])} [{fmt(e['change_ci_low'])}, "
                    f"{fmt(e['change_ci_high'])}].")
            yield ("group_gap", abs(e["d_change"] or 0.0), e["what"], f"cmp-group-{fi}", text,
                   SCORE if e["metric"] == "score" else ATTR)


def _status_leads(c: dict[str, Any]) -> Iterator[Lead]:
    no = c["status"]["not_ok"]
    if not no["changed"]:
        return
    verb = "rose" if no["diff"] > 0 else "fell"
    detail = [f"{r['status']} {r['baseline']} \u2192 {r['current']}"
              for r in c["status"]["statuses"] if r["status"] != "ok" and r["changed"]]
    text = (f"Rows not attributed {verb} from {pct(no['baseline_share'], '.1%')} to "
            f"{pct(no['current_share'], '.1%')} ({pts(no['diff'])} points "
            f"[{pts(no['ci_low'])}, {pts(no['ci_high'])}])"
            + (f"; {', '.join(detail)}" if detail else "") + ".")
    yield "status", abs(no["diff"]), verb, "cmp-status", text, STATUS


def _score_leads(c: dict[str, Any]) -> Iterator[Lead]:
    sc = c["score"]
    if not sc["shifted"]:
        return
    verb = "rose" if sc["diff"] > 0 else "fell"
    text = (f"The mean CLIP score {verb} from {fmt(sc['baseline']['mean'])} to "
            f"{fmt(sc['current']['mean'])} (difference {fmt(sc['diff'])} "
            f"[{fmt(sc['ci_low'])}, {fmt(sc['ci_high'])}], Cohen's d "
            f"{fmt(sc['cohens_d'], '.2f')}; Wasserstein distance {fmt(sc['wasserstein'])}).")
    yield "score", abs(sc["cohens_d"] or 0.0), verb, "cmp-score", text, SCORE


def _share_leads(c: dict[str, Any]) -> Iterator[Lead]:
    for fi, fam in enumerate(c["groups"]):
        for g in fam["shares"]:
            if g["changed"]:
                verb = "grew" if g["diff"] > 0 else "shrank"
                text = (f"{fam['name']}: group \u201c{g['group']}\u201d {verb} from "
                        f"{pct(g['baseline_share'], '.1%')} to {pct(g['share'], '.1%')} of the "
                        f"attributed pairs ({pts(g['diff'])} points [{pts(g['ci_low'])}, "
                        f"{pts(g['ci_high'])}]).")
                yield "group_share", abs(g["diff"]), verb, f"cmp-group-{fi}", text, STATUS


def _word_leads(c: dict[str, Any], s: ReportSettings) -> Iterator[Lead]:
    key = c["words"]["basis"]
    name = "mean attribution" if key == "attr" else "mean share of its caption's attribution"
    for w in c["words"]["moved"][: s.compare_word_findings]:
        verb = "rose" if (w[f"{key}_diff"] or 0.0) > 0 else "fell"
        text = (f"\u201c{w['word']}\u201d: {name} {verb} from {fmt(w[f'baseline_mean_{key}'])} "
                f"to {fmt(w[f'mean_{key}'])} ({fmt(w[f'{key}_diff'])} "
                f"[{fmt(w[f'{key}_ci_low'])}, {fmt(w[f'{key}_ci_high'])}], "
                f"d {fmt(w[f'{key}_d'], '.2f')}; "
                f"{w['count']} uses, baseline {w['baseline_count']}).")
        yield "word", abs(w[f"{key}_d"] or 0.0), verb, "cmp-words", text, ATTR


def findings(c: dict[str, Any], s: ReportSettings) -> list[dict[str, Any]]:
    """The comparison's findings, ranked: shortcuts, group gaps, failed rows, the score,
    group shares, words; each kind by size. A finding resting on numbers that a
    differing setting also changes says so."""
    st = c["settings"]
    out: list[tuple[str, float, dict[str, Any]]] = []
    leads = (*_shortcut_leads(c), *_gap_leads(c), *_status_leads(c), *_score_leads(c),
             *_share_leads(c), *_word_leads(c, s))
    for kind, size, change, anchor, text, rests_on in leads:
        conf = [d["label"] for d in st["differences"] if rests_on in d["affects"]]
        if conf:
            text += (f" Same input, so this comes from the settings ({', '.join(conf)})."
                     if st["input"]["same"] else
                     f" The settings differ too ({', '.join(conf)}): not attributable to the "
                     "data alone.")
        out.append((kind, size, {"kind": kind, "change": change, "anchor": anchor, "text": text,
                                 "confounded_by": conf}))
    out.sort(key=lambda t: (KIND_ORDER.index(t[0]), -t[1]))
    return [f for _, _, f in out]


__all__ = ["KIND_ORDER", "findings"]
