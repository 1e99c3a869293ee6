"""The comparison's findings: the changes worth a reviewer's attention, as sentences, ranked
like the report's (shortcuts, group gaps, failed rows, the score, group shares, words)."""

from __future__ import annotations

from typing import Any

from pipeline.report.compare_settings import ATTR, SCORE, STATUS
from pipeline.report.settings import ReportSettings

#: Findings in this order (each kind by size).
KIND_ORDER = ("shortcut", "group_gap", "status", "score", "group_share", "word")


def _g(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def findings(c: dict[str, Any], s: ReportSettings) -> list[dict[str, Any]]:
    """The comparison's findings, ranked: shortcuts, group gaps, failed rows, the score,
    group shares, words; each kind by size. A finding resting on numbers that a
    differing setting also changes says so."""
    st = c["settings"]
    out: list[tuple[str, float, dict[str, Any]]] = []

    def add(kind: str, size: float, change: str, anchor: str, text: str,
            rests_on: str | None) -> None:
        conf = [d["label"] for d in st["differences"] if rests_on in d["affects"]]
        if conf:
            text += (f" Same input, so this comes from the settings ({', '.join(conf)})."
                     if st["input"]["same"] else
                     f" The settings differ too ({', '.join(conf)}): not attributable to the data alone.")
        out.append((kind, size, {"kind": kind, "change": change, "anchor": anchor, "text": text,
                                 "confounded_by": conf}))

    for i, e in enumerate(c["shortcuts"]["words"]):
        if e["change"] == "unchanged":
            continue
        w, cell = e["word"], e["cell_name"]
        was = (f"baseline: {_g(e['baseline_share'], '.0%')} of its {e['baseline_pairs']} pairs"
               if e["baseline_pairs"] else "the baseline has no pairs with it")
        now = (f"{_g(e['share'], '.0%')} of its {e['pairs']} pairs" if e["pairs"]
               else "no pairs with it now")
        ci = (f"; {_pts(e['diff'])} points [{_pts(e['ci_low'])}, {_pts(e['ci_high'])}]"
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
        add("shortcut", abs(e["diff"] or 1.0), e["change"], f"cmp-shortcut-{i}", text, ATTR)
    for fi, fam in enumerate(c["groups"]):
        for e in fam["gaps"]:
            if e["what"] == "unchanged":
                continue
            text = (f"{fam['name']}: the gap in {e['label']} between \u201c{e['a']}\u201d and "
                    f"\u201c{e['b']}\u201d {e['what']}: difference {_g(e['diff'])} "
                    f"[{_g(e['ci_low'])}, {_g(e['ci_high'])}], Cohen's d {_g(e['cohens_d'], '.2f')} "
                    f"(baseline {_g(e['baseline_diff'])} [{_g(e['baseline_ci_low'])}, "
                    f"{_g(e['baseline_ci_high'])}], d {_g(e['baseline_cohens_d'], '.2f')}); "
                    f"change {_g(e['change'])} [{_g(e['change_ci_low'])}, "
                    f"{_g(e['change_ci_high'])}].")
            add("group_gap", abs(e["d_change"] or 0.0), e["what"], f"cmp-group-{fi}", text,
                SCORE if e["metric"] == "score" else ATTR)
    no = c["status"]["not_ok"]
    if no["changed"]:
        verb = "rose" if no["diff"] > 0 else "fell"
        detail = [f"{r['status']} {r['baseline']} \u2192 {r['current']}"
                  for r in c["status"]["statuses"] if r["status"] != "ok" and r["changed"]]
        text = (f"Rows not attributed {verb} from {_g(no['baseline_share'], '.1%')} to "
                f"{_g(no['current_share'], '.1%')} ({_pts(no['diff'])} points "
                f"[{_pts(no['ci_low'])}, {_pts(no['ci_high'])}])"
                + (f"; {', '.join(detail)}" if detail else "") + ".")
        add("status", abs(no["diff"]), verb, "cmp-status", text, STATUS)
    sc = c["score"]
    if sc["shifted"]:
        verb = "rose" if sc["diff"] > 0 else "fell"
        text = (f"The mean CLIP score {verb} from {_g(sc['baseline']['mean'])} to "
                f"{_g(sc['current']['mean'])} (difference {_g(sc['diff'])} "
                f"[{_g(sc['ci_low'])}, {_g(sc['ci_high'])}], Cohen's d {_g(sc['cohens_d'], '.2f')}; "
                f"Wasserstein distance {_g(sc['wasserstein'])}).")
        add("score", abs(sc["cohens_d"] or 0.0), verb, "cmp-score", text, SCORE)
    for fi, fam in enumerate(c["groups"]):
        for g in fam["shares"]:
            if g["changed"]:
                verb = "grew" if g["diff"] > 0 else "shrank"
                text = (f"{fam['name']}: group \u201c{g['group']}\u201d {verb} from "
                        f"{_g(g['baseline_share'], '.1%')} to {_g(g['share'], '.1%')} of the "
                        f"attributed pairs ({_pts(g['diff'])} points [{_pts(g['ci_low'])}, "
                        f"{_pts(g['ci_high'])}]).")
                add("group_share", abs(g["diff"]), verb, f"cmp-group-{fi}", text, STATUS)
    key = c["words"]["basis"]
    for w in c["words"]["moved"][: s.compare_word_findings]:
        name = "mean attribution" if key == "attr" else "mean share of its caption's attribution"
        verb = "rose" if (w[f"{key}_diff"] or 0.0) > 0 else "fell"
        text = (f"\u201c{w['word']}\u201d: {name} {verb} from {_g(w[f'baseline_mean_{key}'])} to "
                f"{_g(w[f'mean_{key}'])} ({_g(w[f'{key}_diff'])} [{_g(w[f'{key}_ci_low'])}, "
                f"{_g(w[f'{key}_ci_high'])}], d {_g(w[f'{key}_d'], '.2f')}; "
                f"{w['count']} uses, baseline {w['baseline_count']}).")
        add("word", abs(w[f"{key}_d"] or 0.0), verb, "cmp-words", text, ATTR)
    out.sort(key=lambda t: (KIND_ORDER.index(t[0]), -t[1]))
    return [f for _, _, f in out]


__all__ = ["KIND_ORDER", "findings"]
