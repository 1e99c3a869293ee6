"""The short list at the top of the report: what to look at first, each with its anchor.

Findings are leads for a reviewer, not verdicts: a shortcut suspect is a word
whose pairs keep their attribution in one place; a group gap is a difference
between caption groups beyond the configured effect size whose interval
excludes zero.
"""

from __future__ import annotations

from typing import Any

from pipeline.report.formats import fmt

#: A cell holding the top patch this often (and 3x its uniform share) is a model-wide hot spot.
HOTSPOT_MIN_SHARE = 0.10
#: Mean class-token share of the image attribution above which maps carry little.
CLS_SHARE_HIGH = 0.8


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings in order of urgency: nothing to report (empty results, no row attributed),
    shortcuts, group gaps, hot spots, failed rows, words."""
    out: list[dict[str, Any]] = []
    space, ov, words = report["space"], report["overview"], report["words"]
    if ov.get("notice"):
        out.append({"kind": ov["content"], "anchor": "overview" if ov["content"] == "empty"
                    else "errors", "text": ov["notice"]})
    for i, p in enumerate(space.get("suspects", [])):
        out.append({"kind": "shortcut", "anchor": f"suspect-{i}", "word": p["word"],
                    "text": f"Shortcut suspect \u201c{p['word']}\u201d: the top patch of "
                            f"{p['consistency']:.0%} of its {p['pairs']} pairs is in cell "
                            f"{p['modal_cell_name']} (all pairs: {p['baseline']:.0%})."})
    for fi, fam in enumerate(report["groups"]):
        for e in fam["effects"]:
            if e["gap"]:
                out.append({"kind": "group_gap", "anchor": f"group-{fi}", "family": fam["name"],
                            "text": f"{fam['name']}: {e['label']} differs between "
                                    f"\u201c{e['a']}\u201d ({fmt(e['mean_a'])}, n={e['n_a']}) and "
                                    f"\u201c{e['b']}\u201d ({fmt(e['mean_b'])}, n={e['n_b']}): "
                                    f"difference {fmt(e['diff'])} "
                                    f"[{fmt(e['ci_low'])}, {fmt(e['ci_high'])}], "
                                    f"Cohen's d {fmt(e['cohens_d'], '.2f')}, "
                                    f"Cliff's delta {fmt(e['cliffs_delta'], '.2f')}."})
    hot = space.get("hotspot")
    if hot and hot["share"] >= max(HOTSPOT_MIN_SHARE, 3 * hot["uniform"]):
        there = [p["word"] for p in space.get("suspects", []) if p["modal_cell"] == hot["cell"]]
        why = (f"shortcut suspect \u201c{there[0]}\u201d peaks there" if there
               else "no shortcut suspect peaks there, so whatever the caption")
        out.append({"kind": "hotspot", "anchor": "space",
                    "text": f"The top patch is in cell {hot['name']} for {hot['share']:.0%} of "
                            f"pairs (uniform: {hot['uniform']:.1%}); {why}."})
    bad = ov["rows"] - ov["rows_ok"]
    if bad > 0:
        top = ov["errors"][0] if ov["errors"] else None
        most = f"; most common: {top['kind']} ({top['count']})" if top else ""
        out.append({"kind": "errors", "anchor": "errors",
                    "text": f"{bad} of {ov['rows']} rows ({bad / ov['rows']:.1%}) were not "
                            f"attributed{most}."})
    cls = ov.get("image_cls_share")
    if cls is not None and cls >= CLS_SHARE_HIGH:
        out.append({"kind": "cls_share", "anchor": "overview",
                    "text": f"The class token holds {cls:.0%} of the image attribution on "
                            f"average: the patch maps carry little."})
    for key, verb, sign in (("helps", "raises", 1), ("hurts", "lowers", -1)):
        if words[key] and words[key][0]["mean_attr"] * sign > 0:
            w = words[key][0]
            out.append({"kind": f"word_{key}", "anchor": "words", "word": w["word"],
                        "text": f"\u201c{w['word']}\u201d {verb} the alignment most "
                                f"(mean attribution {fmt(w['mean_attr'])} over {w['count']} uses)."})
    return out
