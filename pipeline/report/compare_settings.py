"""The settings of two compared audits: which differ, whether the input is the same, and
what each difference means for the comparison's numbers (its caveats)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.report.compare_sections import Audit

#: What a setting can change: CLIP scores, row statuses, attributions (maps and words).
SCORE, STATUS, ATTR = "score", "status", "attributions"
EVERYTHING = (SCORE, STATUS, ATTR)
#: Settings compared between the audits: key, label, what a difference confounds.
SETTINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model", "model", EVERYTHING),
    ("weights", "weights", EVERYTHING),
    ("precision", "precision", (SCORE, ATTR)),
    ("image_layer", "image layer", (ATTR,)),
    ("text_layer", "text layer", (ATTR,)),
    ("steps", "steps", (ATTR,)),
    ("schedule", "schedule", (ATTR,)),
    ("engine_results_version", "engine results version", EVERYTHING),
    ("torch", "torch version", (SCORE, ATTR)),
    ("open_clip", "open_clip version", (SCORE, ATTR)),
    ("torchvision", "torchvision version", (SCORE, ATTR)),
    ("pillow", "Pillow version", EVERYTHING),
    ("data", "data columns and limits", EVERYTHING),
)
#: The part of the result settings that decides which rows fail and what a caption is.
DATA_KEYS = ("image_column", "caption_column", "id_column", "max_pixels", "max_caption_chars",
             "decode")


def _model_setting(manifest: dict[str, Any], key: str) -> Any:
    meta = manifest.get("metadata") or {}
    model = (manifest.get("settings") or {}).get("model") or {}
    if key in meta:
        return meta[key]
    if key in ("image_layer", "text_layer"):
        value = model.get(key)
        return model.get("layer") if value is None else value
    if key == "model":
        return model.get("name")
    return model.get(key)


def setting_values(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide results, as this audit's manifest records them."""
    out = {key: _model_setting(manifest, key) for key, _, _ in SETTINGS if key != "data"}
    data = (manifest.get("settings") or {}).get("data") or {}
    out["data"] = {k: data.get(k) for k in DATA_KEYS if k in data}
    return out


def _show(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items()) or "n/a"
    return str(value)


def _files(manifest: dict[str, Any]) -> dict[str, int] | None:
    """Input file (uri|size|version) -> rows covered; None when the manifest cannot tell."""
    out: dict[str, int] = {}
    for p in manifest.get("parts") or []:
        fp = str(p.get("input_fingerprint") or "")
        if fp.count("|") < 3:
            return None
        out[fp.rsplit("|", 1)[0]] = out.get(fp.rsplit("|", 1)[0], 0) + int(p.get("rows") or 0)
    return out


def input_relation(cur: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Whether the two audits read the same input: the same files (URI, size and version)
    with the same rows."""
    a, b = _files(cur), _files(base)
    if a is None or b is None:
        return {"same": None, "shared_files": None, "text": "The manifests do not say which "
                "input files the audits read, so whether the data is the same is unknown."}
    shared = [f for f in a if f in b and a[f] == b[f]]
    same = bool(a) and len(shared) == len(a) == len(b)
    if same:
        text = f"Same input: the same {len(a)} file{'s' if len(a) != 1 else ''} (same size and version)."
    elif shared:
        text = (f"Partly the same input: {len(shared)} of {len(a)} current and {len(b)} baseline "
                "files are the same (same size and version).")
    else:
        text = f"Different input: none of the {len(a)} current files is among the baseline's {len(b)}."
    return {"same": same, "shared_files": len(shared), "current_files": len(a),
            "baseline_files": len(b), "text": text}


def settings_section(cur: Audit, base: Audit) -> dict[str, Any]:
    """The settings that differ, what they confound, and sentences saying so."""
    a, b = setting_values(cur.manifest), setting_values(base.manifest)
    diffs = [{"setting": key, "label": label, "current": _show(a[key]), "baseline": _show(b[key]),
              "affects": list(affects)}
             for key, label, affects in SETTINGS if a[key] != b[key]]
    grids = [None if x.agg.grid is None else [x.agg.grid.h, x.agg.grid.w] for x in (cur, base)]
    data = input_relation(cur.manifest, base.manifest)
    confounds = sorted({s for d in diffs for s in d["affects"]}, key=EVERYTHING.index)
    caveats = [data["text"]]
    labels = ", ".join(d["label"] for d in diffs)
    if not diffs:
        caveats.append("Same settings: the differences below come from the data "
                       "(the intervals account for sampling).")
    elif data["same"]:
        caveats.append(f"The settings differ ({labels}) on the same input: every difference "
                       "below comes from the settings, none from the data.")
    else:
        kinds = " and ".join(confounds) if set(confounds) != set(EVERYTHING) \
            else "every number"
        caveats.append(f"The settings differ ({labels}): differences in {kinds} cannot be "
                       "attributed to the data; the others can.")
        if ATTR in confounds and SCORE not in confounds:
            caveats.append("Layers, steps and schedule change attributions only: CLIP scores "
                           "and statuses still compare as a change in the data.")
    if any(d["setting"] in ("model", "weights") for d in diffs):
        caveats.append("Raw attribution values are on each model's own scale: compare word "
                       "shares and shortcut consistency, not mean attributions.")
    if grids[0] and grids[1] and grids[0] != grids[1]:
        caveats.append(f"Patch grids differ ({grids[0][0]}x{grids[0][1]} and "
                       f"{grids[1][0]}x{grids[1][1]}): shortcut cells are compared by word only.")
    for who, x in (("current", cur), ("baseline", base)):
        if x.complete is False:
            caveats.append(f"The {who} audit is partial (no _SUCCESS): it covers only the parts "
                           "its manifest lists.")
    return {"same": not diffs, "differences": diffs, "confounds": confounds, "input": data,
            "grids": grids, "caveats": caveats,
            "current": {k: _show(v) for k, v in a.items()},
            "baseline": {k: _show(v) for k, v in b.items()}}



__all__ = ["ATTR", "EVERYTHING", "SCORE", "SETTINGS", "STATUS", "input_relation",
           "setting_values", "settings_section"]
