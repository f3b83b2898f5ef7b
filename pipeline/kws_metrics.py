"""Keyword-spotting metrics of an open-set speech run: false rejects, false accepts, a DET curve (numpy + matplotlib).

    probs float [N, K], classes K names --accepted_keywords(t)--> int [N] keyword index or REJECTED
        --rates_at--> FRR, FAR (overall and per keyword) at one threshold t
        --det_curve--> DetCurve: FRR and FAR at every threshold that changes a decision
        --operating_point--> the smallest threshold with FAR <= target, and the FRR there
        --plot_det--> det.png
    keyword_spotting_metrics (all of it, for metrics.json) --markdown_section / operating_point_summary--> report.md, console line

Decision rule at threshold t (one definition, used by evaluate and by `actrec predict --threshold`):
a clip is *accepted as keyword k* when its top class (argmax over all K classes, ties to the lower
index) is keyword k and its probability is >= t; otherwise it is *rejected* (reported as `_unknown_`,
or `_silence_` when that is its top class). t = 0 is the plain argmax decision.

- FRR_k: share of the clips of keyword k NOT accepted as k (rejected, or accepted as another keyword).
- FRR: the same over all keyword clips (a mean over clips, not over keywords).
- FAR: share of the non-keyword clips (true label `_silence_` or `_unknown_`) accepted as any keyword;
  FAR_k counts those accepted as keyword k, so the FAR_k sum to FAR.
- A rate with no clips to count is None (undefined), never 0: FRR without keyword clips, FAR without
  `_silence_`/`_unknown_` clips (a closed-set test split), FRR_k of a keyword with no clips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.labels import REJECT_LABELS, UNKNOWN, keyword_ids
from pipeline.report import check_scores, format_value, markdown_cell, markdown_code, new_figure, save_figure

REJECTED = -1  # accepted_keywords' value for a clip accepted as no keyword
FAR_TARGET = 0.01  # the operating point keyword spotters are compared at: FRR at 1% false accepts
DET_FILE = "det.png"
_FAR_SLACK = 1e-12  # FAR = count / n is compared with the target as a float: 1/100 must meet 0.01


def accepted_keywords(probs: Any, classes: Sequence[str], threshold: float = 0.0) -> np.ndarray:
    """int [N]: the class index each clip is accepted as (a keyword), or REJECTED; probs float [N, K]."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be float [N, {len(classes)}] (one column per class), got shape {probs.shape}")
    top = probs.argmax(axis=1)
    is_keyword = np.isin(top, keyword_ids(classes))
    confident = probs[np.arange(len(top)), top] >= threshold
    return np.where(is_keyword & confident, top, REJECTED)


def decided_labels(probs: Any, classes: Sequence[str], threshold: float) -> list[str]:
    """What a keyword spotter reports for each row of probs float [N, K] at threshold t.

    The accepted keyword; otherwise the top class when it is `_silence_` or `_unknown_` itself; otherwise
    (a keyword below t) `_unknown_`, also for a run whose classes have no `_unknown_`.
    """
    probs = np.asarray(probs)
    accepted = accepted_keywords(probs, classes, threshold)
    top = probs.argmax(axis=1)
    return [classes[a] if a != REJECTED else (classes[t] if classes[t] in REJECT_LABELS else UNKNOWN) for a, t in zip(accepted, top)]


def clip_counts(labels: Any, classes: Sequence[str]) -> dict[str, int]:
    """Clips per kind of true label, labels int [N]: {'keyword': n, '_silence_': n, '_unknown_': n} (reject labels the run has)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = {"keyword": int(np.isin(labels, keyword_ids(classes)).sum())}
    for name in REJECT_LABELS:
        if name in classes:
            counts[name] = int((labels == list(classes).index(name)).sum())
    return counts


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def rates_at(labels: Any, probs: Any, classes: Sequence[str], threshold: float = 0.0) -> dict:
    """False-reject and false-accept rates at one threshold: labels int [N] true class indices, probs float [N, K].

    Returns {threshold, frr, far, frr_per_keyword: {keyword: rate}, far_per_keyword: {keyword: rate}},
    each rate None when it has no clips to count (see the module docstring).
    """
    labels, probs = check_scores(labels, probs, classes)
    accepted = accepted_keywords(probs, classes, threshold)
    keywords = keyword_ids(classes)
    is_keyword_clip = np.isin(labels, keywords)
    non_keyword = int((~is_keyword_clip).sum())
    frr_k, far_k = {}, {}
    for k in keywords:
        mine = labels == k
        frr_k[classes[k]] = _ratio(int((accepted[mine] != k).sum()), int(mine.sum()))
        far_k[classes[k]] = _ratio(int((accepted[~is_keyword_clip] == k).sum()), non_keyword)
    false_rejects = int((accepted[is_keyword_clip] != labels[is_keyword_clip]).sum())
    false_accepts = int((accepted[~is_keyword_clip] != REJECTED).sum())
    return {
        "threshold": float(threshold),
        "frr": _ratio(false_rejects, int(is_keyword_clip.sum())),
        "far": _ratio(false_accepts, non_keyword),
        "frr_per_keyword": frr_k,
        "far_per_keyword": far_k,
    }


@dataclass(frozen=True)
class DetCurve:
    """FRR and FAR at every threshold that changes a decision.

    thresholds float [M], ascending: 0 (the argmax decision), then each distinct top-1 probability of the
    clips whose top class is a keyword, except the lowest (it decides as 0 does). Every threshold in
    (thresholds[i-1], thresholds[i]] decides as thresholds[i], so the curve is exact and thresholds[i] is the
    smallest threshold of its decisions. A threshold above them all accepts nothing (FRR 1, FAR 0): not a point.
    frr, far float [M]: non-increasing FAR and non-decreasing FRR; None when undefined (no keyword clips /
    no non-keyword clips).
    """

    thresholds: np.ndarray
    frr: np.ndarray | None
    far: np.ndarray | None

    def to_dict(self) -> dict:
        """JSON-serialisable {thresholds, frr, far} lists (None stays None)."""
        return {name: None if v is None else [float(x) for x in v] for name, v in
                (("thresholds", self.thresholds), ("frr", self.frr), ("far", self.far))}

    @classmethod
    def from_dict(cls, d: Mapping) -> DetCurve:
        """The curve back from to_dict's form (metrics.json's det_curve)."""
        return cls(*(None if d[name] is None else np.asarray(d[name], dtype=np.float64) for name in ("thresholds", "frr", "far")))


def det_curve(labels: Any, probs: Any, classes: Sequence[str]) -> DetCurve:
    """The DET curve of labels int [N] and probs float [N, K] (see DetCurve); O(N log N)."""
    labels, probs = check_scores(labels, probs, classes)
    keywords = keyword_ids(classes)
    top = probs.argmax(axis=1)
    score = probs[np.arange(len(top)), top]
    candidate = np.isin(top, keywords)  # clips a threshold can accept; the others are rejected at every threshold
    is_keyword_clip = np.isin(labels, keywords)
    distinct = np.unique(score[candidate])
    thresholds = np.concatenate([[0.0], distinct[1:]])

    def accepted_at_least(scores: np.ndarray) -> np.ndarray:
        """int [M]: how many of scores are >= each threshold."""
        return len(scores) - np.searchsorted(np.sort(scores), thresholds, side="left")

    n_keyword, n_other = int(is_keyword_clip.sum()), int((~is_keyword_clip).sum())
    true_accepts = accepted_at_least(score[candidate & (top == labels)])  # top == labels implies a keyword clip
    false_accepts = accepted_at_least(score[candidate & ~is_keyword_clip])
    return DetCurve(
        thresholds=thresholds,
        frr=(n_keyword - true_accepts) / n_keyword if n_keyword else None,  # as rates_at counts, to the last bit
        far=false_accepts / n_other if n_other else None,
    )


def operating_point(curve: DetCurve, far_target: float = FAR_TARGET) -> tuple[float | None, float | None]:
    """(smallest threshold with FAR <= far_target, FRR there); (None, None) when FAR is undefined or no
    threshold that still accepts a clip reaches the target. The FRR is None without keyword clips."""
    if curve.far is None:
        return None, None
    meets = np.flatnonzero(curve.far <= far_target + _FAR_SLACK)
    if meets.size == 0:
        return None, None
    i = int(meets[0])  # FAR does not increase with t: the first point that meets the target is the smallest threshold
    return float(curve.thresholds[i]), None if curve.frr is None else float(curve.frr[i])


def keyword_spotting_metrics(labels: Any, probs: Any, classes: Sequence[str], far_target: float = FAR_TARGET) -> dict:
    """What evaluate adds to metrics.json for an open-set run; labels int [N], probs float [N, K].

    frr, far, frr_per_keyword, far_per_keyword: at the argmax decision (t = 0);
    far_target; threshold_at_far, frr_at_far, far_at_far: the smallest threshold with FAR <= far_target, FRR and FAR there;
    frr_per_keyword_at_far, far_per_keyword_at_far: per keyword at that threshold (None without one);
    kws_clips: clip_counts(...); kws_notes: one sentence per undefined value; det_curve: DetCurve.to_dict().
    """
    at_argmax = rates_at(labels, probs, classes, 0.0)
    curve = det_curve(labels, probs, classes)
    threshold, frr_at = operating_point(curve, far_target)
    at_target = rates_at(labels, probs, classes, threshold) if threshold is not None else None
    counts = clip_counts(labels, classes)
    notes = []
    if counts["keyword"] == 0:
        notes.append("FRR is undefined: no keyword clips were scored.")
    if sum(n for name, n in counts.items() if name != "keyword") == 0:
        notes.append(f"FAR is undefined: no {' / '.join(n for n in REJECT_LABELS if n in classes)} clips were scored.")
    elif threshold is None:
        notes.append(f"No threshold that accepts any clip reaches FAR <= {_percent(far_target)}.")
    return {
        "frr": at_argmax["frr"],
        "far": at_argmax["far"],
        "frr_per_keyword": at_argmax["frr_per_keyword"],
        "far_per_keyword": at_argmax["far_per_keyword"],
        "far_target": float(far_target),
        "threshold_at_far": threshold,
        "frr_at_far": frr_at,
        "far_at_far": at_target["far"] if at_target else None,
        "frr_per_keyword_at_far": at_target["frr_per_keyword"] if at_target else None,
        "far_per_keyword_at_far": at_target["far_per_keyword"] if at_target else None,
        "kws_clips": counts,
        "kws_notes": notes,
        "det_curve": curve.to_dict(),
    }


# ----------------------------------------------------------------------------- plot

_AXIS_TICKS = [0.0, 0.001, 0.01, 0.1, 1.0]
_AXIS_LABELS = ["0", "0.1%", "1%", "10%", "100%"]


def plot_det(curve: DetCurve, path: str | Path, far_target: float = FAR_TARGET) -> Path:
    """DET plot (PNG): FRR against FAR over every threshold, on symlog axes (linear below 0.1%, so 0 shows),
    with the argmax decision (t = 0) and the FAR <= far_target operating point marked."""
    fig = new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    if curve.far is None or curve.frr is None:
        missing = "no keyword clips" if curve.frr is None else "no _silence_ / _unknown_ clips"
        ax.text(0.5, 0.5, f"DET curve undefined: {missing} scored", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.plot(curve.far, curve.frr, color="#4c72b0", lw=1.2, marker="." if len(curve.thresholds) <= 200 else None, ms=4,
                label=f"one point per threshold ({len(curve.thresholds)})")
        ax.plot(curve.far[0], curve.frr[0], "s", color="0.3", ms=6, label=f"argmax (t = 0): FRR {curve.frr[0]:.3f}, FAR {curve.far[0]:.3f}")
        threshold, frr = operating_point(curve, far_target)
        ax.axvline(far_target, color="#c44e52", ls="--", lw=0.8)
        if threshold is not None:
            i = int(np.searchsorted(curve.thresholds, threshold))
            where = f"from t = {shown_threshold(threshold)}" if threshold else "already at argmax"
            ax.plot(curve.far[i], frr, "o", color="#c44e52", ms=7, mfc="none", mew=1.5, label=f"FAR <= {_percent(far_target)} {where}: FRR {frr:.3f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xscale("symlog", linthresh=1e-3, linscale=0.5)
    ax.set_yscale("symlog", linthresh=1e-3, linscale=0.5)
    ax.set_xticks(_AXIS_TICKS, _AXIS_LABELS)
    ax.set_yticks(_AXIS_TICKS, _AXIS_LABELS)
    ax.set_xlim(-1.5e-4, 1.0)  # a little room left of 0, so points at FAR 0 (or FRR 0) are not hidden by the axes
    ax.set_ylim(-1.5e-4, 1.05)
    ax.grid(alpha=0.3)
    ax.set_xlabel("false-accept rate (non-keyword clips accepted as a keyword)")
    ax.set_ylabel("false-reject rate (keyword clips not accepted)")
    ax.set_title("DET curve (keyword spotting)")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report text


def shown_threshold(t: float) -> str:
    """A threshold with 4 decimals, rounded UP: passing the shown value to `predict --threshold` accepts no clip
    the exact threshold rejects, so FAR stays within the target."""
    return f"{math.ceil(t * 1e4 - 1e-6) / 1e4:.4f}"  # - 1e-6: 0.62 * 1e4 = 6200.000000000001 must stay 0.6200


def _percent(rate: float) -> str:
    return f"{rate * 100:g}%"  # 0.01 -> 1%, 0.005 -> 0.5%


def operating_point_summary(metrics: Mapping) -> str:
    """The console's words on keyword_spotting_metrics(...): 'FRR 0.150 at FAR <= 1% (t = 0.6200)'."""
    threshold = metrics["threshold_at_far"]
    at = f" (t = {shown_threshold(threshold)})" if threshold is not None else ""
    return f"FRR {format_value(metrics['frr_at_far'])} at FAR <= {_percent(metrics['far_target'])}{at}"


def markdown_section(metrics: Mapping) -> str:
    """report.md's "Keyword spotting" section: FRR/FAR per keyword at the argmax decision and at the FAR target,
    the threshold, the clips scored, and the DET plot (DET_FILE, beside report.md); metrics holds
    keyword_spotting_metrics' keys (and compute_metrics' per_class, for the clips per keyword)."""
    counts = metrics["kws_clips"]
    scored = ", ".join([f"{counts['keyword']} keyword clips"] + [f"{n} {markdown_code(name)}" for name, n in counts.items() if name != "keyword"])
    threshold, target = metrics["threshold_at_far"], _percent(metrics["far_target"])
    columns = [("argmax", metrics["frr_per_keyword"], metrics["far_per_keyword"], metrics["frr"], metrics["far"])]
    if threshold:  # None: no threshold reaches the target; 0: the argmax decision does (the same column)
        columns.append((f"t = {shown_threshold(threshold)}", metrics["frr_per_keyword_at_far"], metrics["far_per_keyword_at_far"],
                        metrics["frr_at_far"], metrics["far_at_far"]))
    lines = [
        "## Keyword spotting",
        "",
        "A clip is accepted as keyword k when its top class is k with probability >= t, otherwise rejected (`_unknown_`); "
        "argmax is t = 0. FRR: share of a keyword's clips not accepted as it. FAR: share of the non-keyword clips "
        "(`_silence_`, `_unknown_`) accepted as the keyword; the keywords' FARs add up to the total. — means undefined (no clips to count).",
        "",
        f"Scored: {scored}.",
        "",
        "| keyword | clips | " + " | ".join(f"FRR ({c[0]}) | FAR ({c[0]})" for c in columns) + " |",
        "|---|---|" + "---|---|" * len(columns),
    ]
    per_class = metrics.get("per_class", {})
    for name in metrics["frr_per_keyword"]:
        cells = " | ".join(f"{format_value(frr_k[name])} | {format_value(far_k[name])}" for _, frr_k, far_k, _, _ in columns)
        lines.append(f"| {markdown_cell(name)} | {per_class.get(name, {}).get('support', '—')} | {cells} |")
    totals = " | ".join(f"{format_value(frr)} | {format_value(far)}" for *_, frr, far in columns)
    lines += [f"| **all keywords** | {counts['keyword']} | {totals} |", ""]
    if threshold == 0.0:
        lines += [f"FAR <= {target} already at the argmax decision (t = 0): FRR {format_value(metrics['frr_at_far'])}.", ""]
    elif threshold is not None:
        shown = shown_threshold(threshold)
        usable = float(shown) < 1  # predict takes 0 < P < 1
        lines += [f"FAR <= {target} from threshold t = {shown} (the smallest that reaches it): FRR {format_value(metrics['frr_at_far'])} there"
                  + (f"; `actrec predict --threshold {shown}` applies it." if usable else "."), ""]
    for note in metrics["kws_notes"]:
        lines += [note, ""]
    lines += [f"![DET curve: FRR against FAR over every threshold]({DET_FILE})", ""]
    return "\n".join(lines)
