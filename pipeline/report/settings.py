"""Typed report settings (``report/`` Hydra group) and caption term groups (``report/groups/``).

``conf/report/default.yaml`` names ``ReportSettings`` as ``_target_``; each
``conf/report/groups/<name>.yaml`` adds one *family* of groups under
``report.groups.<name>``: the groups to compare with each other, each a list of
terms. A pair belongs to a group when its caption contains one of the group's
terms (a term with spaces matches consecutive words). ``rest`` names an extra
group of the pairs that match none of the family's groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ConfigError

#: How CLIP's tokenizer cuts text into words before BPE (letters, single digits,
#: punctuation runs; the contractions split off as 's, 't ...): terms are cut the
#: same way so "t-shirt" matches the caption words "t", "-", "shirt".
_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.IGNORECASE)


def _require(cond: bool, setting: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{setting}: {message}")


def term_words(term: str) -> tuple[str, ...]:
    """A configured term as the case-folded words a caption must contain in a row."""
    return tuple(w.casefold() for w in _WORDS.findall(str(term).casefold()))


@dataclass
class GroupFamily:
    """Groups of captions compared with each other (e.g. gendered terms)."""

    name: str
    groups: dict[str, tuple[tuple[str, ...], ...]]
    rest: str | None = None
    description: str = ""

    @classmethod
    def from_config(cls, name: str, spec: Any) -> GroupFamily:
        setting = f"report.groups.{name}"
        _require(isinstance(spec, dict), setting, "must be a mapping with a 'groups' entry")
        unknown = set(spec) - {"groups", "rest", "description"}
        _require(not unknown, setting, f"unknown keys {sorted(unknown)}")
        raw = spec.get("groups") or {}
        _require(isinstance(raw, dict) and raw, f"{setting}.groups", "must map names to term lists")
        groups: dict[str, tuple[tuple[str, ...], ...]] = {}
        for g, terms in raw.items():
            _require(bool(str(g).strip()), f"{setting}.groups", "group names must not be empty")
            _require(isinstance(terms, (list, tuple)) and len(terms) > 0,
                     f"{setting}.groups.{g}", "must be a non-empty list of terms")
            words = tuple(dict.fromkeys(t for t in (term_words(x) for x in terms) if t))
            _require(bool(words), f"{setting}.groups.{g}", "has no usable term")
            groups[str(g)] = words
        rest = spec.get("rest")
        rest = None if rest in (None, "", "null") else str(rest)
        _require(rest not in groups, f"{setting}.rest", f"{rest!r} is also a group name")
        _require(len(groups) + (rest is not None) >= 2, setting,
                 "needs at least two groups to compare (or one group and 'rest')")
        return cls(str(name), groups, rest, str(spec.get("description") or "").strip())

    @property
    def names(self) -> list[str]:
        """Group names in order, ``rest`` last."""
        return [*self.groups, *([self.rest] if self.rest else [])]


#: Settings of where and how a report runs, not of what it computes: left out of the
#: settings that ``report.json`` and ``flags.parquet`` record (same numbers either way).
RUN_ONLY = frozenset({"workers", "progress", "log_every_s"})


@dataclass
class ReportSettings:
    """What the report computes and shows (``report/`` group). See conf/report/default.yaml."""

    enabled: bool = False  # used by nibt-audit: build the report after the run
    seed: int = 0
    words_top: int = 15
    words_min_count: int = 20
    words_skip_punctuation: bool = True
    errors_top: int = 10
    errors_examples: int = 3
    bootstrap_samples: int = 1000
    bootstrap_reservoir: int = 10000
    confidence: float = 0.95
    groups_min_pairs: int = 30
    groups_min_effect: float = 0.2
    shortcut_min_count: int = 20
    shortcut_min_excess: float = 0.15
    shortcut_max_words: int = 5000
    shortcut_listed: int = 10
    review_pairs: int = 6
    review_suspects: int = 3
    review_suspect_examples: int = 3
    thumbnail_px: int = 128
    zoom_px: int = 384
    flags_low_score_share: float = 0.01
    compare_min_count: int = 20
    compare_min_effect: float = 0.2
    compare_fdr: float = 0.05
    compare_min_status_change: float = 0.01
    compare_min_shortcut_change: float = 0.05
    compare_min_share_change: float = 0.05
    compare_words_top: int = 15
    compare_word_findings: int = 3
    workers: int | None = None  # processes for the passes; None: every core, 1: this process
    progress: bool = True  # a bar on standard error while a pass runs (on a terminal)
    log_every_s: float = 30.0  # seconds between a pass's progress lines in the log
    groups: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("words_top", "errors_top", "bootstrap_samples", "bootstrap_reservoir",
                     "shortcut_max_words", "thumbnail_px", "zoom_px", "compare_words_top"):
            _require(getattr(self, name) >= 1, f"report.{name}", "must be >= 1")
        for name in ("words_min_count", "errors_examples", "groups_min_pairs",
                     "shortcut_min_count", "shortcut_listed", "review_pairs", "review_suspects",
                     "review_suspect_examples", "compare_min_count", "compare_word_findings"):
            _require(getattr(self, name) >= 0, f"report.{name}", "must be >= 0")
        _require(self.log_every_s > 0, "report.log_every_s", "must be > 0")
        for name in ("compare_min_effect", "compare_min_status_change",
                     "compare_min_shortcut_change", "compare_min_share_change"):
            _require(getattr(self, name) >= 0, f"report.{name}", "must be >= 0")
        _require(self.workers is None or self.workers >= 1, "report.workers",
                 "must be >= 1 (or null: every core)")
        _require(0 <= self.flags_low_score_share <= 1, "report.flags_low_score_share",
                 "must be in [0, 1]")
        _require(0 < self.compare_fdr < 1, "report.compare_fdr", "must be in (0, 1)")
        _require(0.5 <= self.confidence < 1.0, "report.confidence", "must be in [0.5, 1)")
        _require(self.groups_min_effect >= 0, "report.groups_min_effect", "must be >= 0")
        _require(self.thumbnail_px <= 1024, "report.thumbnail_px", "must be <= 1024")
        _require(self.zoom_px <= 2048, "report.zoom_px", "must be <= 2048")
        _require(isinstance(self.groups, dict), "report.groups", "must be a mapping")
        self.families()  # validate now, with the setting's name in the error

    def families(self) -> list[GroupFamily]:
        """The configured group families, in configuration order."""
        return [GroupFamily.from_config(k, v) for k, v in (self.groups or {}).items()]
