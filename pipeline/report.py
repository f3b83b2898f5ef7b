"""Metrics and reports for `actrec evaluate` / `actrec predict` (numpy + matplotlib only, no Keras).

    labels int [N], probs float [N, K] --compute_metrics--> dict (JSON-serialisable)
        --write_report--> out_dir/metrics.json, confusion_matrix.csv, confusion_matrix.png,
                          per_class.png, reliability.png, report.md
    view_probs float [N, V, K] --multi_view_scores--> probs float [N, K]    (mean over views)
    window probs float [W, K] --plot_timeline / write_timeline_csv--> timeline PNG / CSV  (long videos)

Conventions (one definition each):
- The prediction of a clip is `argmax(probs)`; ties go to the lowest class index (numpy's argmax).
  Top-k ranks with a stable sort, so ties also favour the lower index.
- Undefined ratios (precision of a class never predicted, recall of a class with no true clips)
  are 0.0, as scikit-learn's `zero_division=0`; each per-class entry also carries `support`
  (true clips) and `predicted` (clips predicted as it) so a reader can tell 0 from undefined.
- `mean_class_accuracy` averages per-class recall over the classes present in `labels`.
- `macro_f1` averages per-class F1 over the classes present in `labels` OR in the predictions
  (scikit-learn's default label set for `f1_score(average="macro")`): a class predicted but never
  true counts with F1 = 0 (it only produced false positives); a class absent from both is left out.
- `ece` bins the confidence `max(probs)` into `n_bins` equal-width bins on [0, 1] (bin b holds
  b/n <= conf < (b+1)/n, the last bin also holds 1.0): ECE = sum_b |acc_b - conf_b| * n_b / N.

Plots use matplotlib's object API on an Agg canvas (`Figure` + `FigureCanvasAgg`), so they are
headless and never change the pyplot backend of the calling process (e.g. a notebook's).
Every file is written atomically (temporary sibling, then rename).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.files import atomic_write_json, atomic_write_text, temp_path

REPORT_FILES = (
    "metrics.json",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "per_class.png",
    "reliability.png",
    "report.md",
)
ANNOTATE_MAX_CLASSES = 20  # confusion matrix cells carry their value up to this many classes
TICK_LABELS_MAX_CLASSES = 120  # beyond this, class names on the confusion matrix axes are unreadable
PER_CLASS_PLOT_MAX = 60  # beyond this, the per-class chart shows the worst and best halves


# ----------------------------------------------------------------------------- metrics


def check_scores(labels: Any, probs: Any, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], probs float64 [N, K]) once shapes, integer labels in [0, K) and K class names are checked."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be float [N, K], got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must be int [N] with N = {probs.shape[0]} (rows of probs), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("labels must be integer class indices")
    labels = labels.astype(np.int64)
    k = probs.shape[1]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} columns of probs")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    return labels, probs


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """int [N, k]: class indices by decreasing probability (stable: ties favour the lower index)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def confusion_counts(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """int64 [K, K] counts; rows = true class, columns = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def calibration_bins(confidence: Any, correct: Any, n_bins: int = 15) -> tuple[float | None, list[dict]]:
    """(ECE, reliability bins) for confidence float [N] in [0, 1] and correct bool [N].

    Bins are equal-width on [0, 1]; bin b holds b/n <= conf < (b+1)/n (the last one also 1.0).
    Each bin is {lower, upper, count, confidence (mean), accuracy}; the means are None when empty.
    ECE = sum_b |accuracy_b - confidence_b| * count_b / N (None when N = 0).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    # + 1e-9: a confidence on a bin edge written as a decimal (0.29 * 100 = 28.999...) lands in the upper bin
    index = np.clip(np.floor(confidence * n_bins + 1e-9).astype(np.int64), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        conf = float(confidence[member].mean()) if count else None
        acc = float(correct[member].mean()) if count else None
        if count:
            ece += abs(acc - conf) * count
        bins.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": count, "confidence": conf, "accuracy": acc})
    n = confidence.size
    return (ece / n if n else None), bins


def compute_metrics(labels: Any, probs: Any, class_names: Sequence[str], n_bins: int = 15) -> dict:
    """Classification metrics of clip scores.

    labels: int [N] true class indices; probs: float [N, K] class probabilities (rows sum to 1);
    class_names: K names. Returns a JSON-serialisable dict:
      num_clips, num_classes, class_names,
      top1, top5 (None unless K > 5), mean_class_accuracy, macro_f1,
      per_class: {name: {precision, recall, f1, support, predicted}},
      ece, ece_bins, reliability: [{lower, upper, count, confidence, accuracy}] (n_bins entries),
      confusion: [K][K] int counts (rows = true, columns = predicted).
    Rates are None when N = 0. See the module docstring for the conventions.
    """
    labels, probs = check_scores(labels, probs, class_names)
    n, k = probs.shape
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    conf = confusion_counts(labels, pred, k)
    tp = np.diag(conf)
    support = conf.sum(axis=1)  # true clips per class
    predicted = conf.sum(axis=0)  # clips predicted as the class

    per_class, recalls, f1s = {}, [], []
    for c, name in enumerate(class_names):
        precision = _ratio(tp[c], predicted[c])
        recall = _ratio(tp[c], support[c])
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[str(name)] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(support[c]),
            "predicted": int(predicted[c]),
        }
        if support[c] > 0:
            recalls.append(recall)
        if support[c] > 0 or predicted[c] > 0:
            f1s.append(f1)

    top5 = None
    if k > 5 and n:
        top5 = float(np.mean(np.any(_top_k(probs, 5) == labels[:, None], axis=1)))
    ece, bins = calibration_bins(probs.max(axis=1) if n else np.zeros(0), pred == labels, n_bins)
    return {
        "num_clips": int(n),
        "num_classes": int(k),
        "class_names": [str(c) for c in class_names],
        "top1": float(np.mean(pred == labels)) if n else None,
        "top5": top5,
        "mean_class_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "ece": ece,
        "ece_bins": int(n_bins),
        "per_class": per_class,
        "reliability": bins,
        "confusion": conf.astype(int).tolist(),
    }


def multi_view_scores(view_probs: Any) -> np.ndarray:
    """Clip scores of the multi-view test protocol: view_probs float [N, V, K] -> float [N, K], the mean over views."""
    view_probs = np.asarray(view_probs)
    if view_probs.ndim != 3 or view_probs.shape[1] == 0:
        raise ValueError(f"view_probs must be float [N, V, K] with V >= 1, got shape {view_probs.shape}")
    return view_probs.mean(axis=1)


def worst_misclassified(labels: Any, probs: Any, clip_ids: Sequence[str], class_names: Sequence[str], k: int = 10) -> list[dict]:
    """The k most confidently wrong clips: misclassified clips by decreasing probability of the predicted class.

    labels: int [N]; probs: float [N, K]; clip_ids: N clip paths (or ids). Returns up to k dicts
    {path, true, true_prob, predicted, confidence, top3: [[label, prob], ...]} (top3 holds
    min(3, K) entries); equal confidences keep the input order.
    """
    labels, probs = check_scores(labels, probs, class_names)
    if len(clip_ids) != probs.shape[0]:
        raise ValueError(f"{len(clip_ids)} clip ids for {probs.shape[0]} rows of probs")
    if probs.shape[0] == 0 or k <= 0:
        return []
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:k]
    top = _top_k(probs, min(3, probs.shape[1]))
    return [
        {
            "path": str(clip_ids[i]),
            "true": str(class_names[labels[i]]),
            "true_prob": float(probs[i, labels[i]]),
            "predicted": str(class_names[pred[i]]),
            "confidence": float(probs[i, pred[i]]),
            "top3": [[str(class_names[c]), float(probs[i, c])] for c in top[i]],
        }
        for i in order
    ]


def summary_line(metrics: Mapping) -> str:
    """One line for the console: 'top-1 0.812 | top-5 0.950 | mean class acc 0.800 | macro-F1 0.790 | ECE 0.041 | 120 clips'."""
    parts = [f"{label} {format_value(metrics.get(key))}" for key, label in _HEADLINE if key != "top5" or metrics.get("top5") is not None]
    return " | ".join(parts + [f"{metrics.get('num_clips', 0)} clips"])


# ----------------------------------------------------------------------------- report files

_HEADLINE = (
    ("top1", "top-1"),
    ("top5", "top-5"),
    ("mean_class_accuracy", "mean class acc"),
    ("macro_f1", "macro-F1"),
    ("ece", "ECE"),
)
_HEADLINE_LONG = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "mean_class_accuracy": "mean class accuracy",
    "macro_f1": "macro-F1",
    "ece": "expected calibration error",
}


def format_value(value: Any, digits: int = 3) -> str:
    """A metric as report text: floats with `digits` decimals, None or NaN (undefined) as —."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_code(text: Any) -> str:
    """Inline code span that survives backticks and pipes inside the text."""
    text = str(text).replace("|", "\\|").replace("\n", " ")
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def row_normalised(confusion: Any) -> np.ndarray:
    """float64 [K, K]: each row of the count matrix divided by its sum (rows of classes with no clips stay 0)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    sums = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, sums, out=np.zeros_like(confusion), where=sums > 0)


def group_skipped(skipped: Iterable[tuple[str, str]]) -> dict:
    """{count, by_reason: {reason: [paths]}} with reasons by decreasing number of clips."""
    by_reason: dict[str, list[str]] = {}
    count = 0
    for path, reason in skipped:
        by_reason.setdefault(str(reason), []).append(str(path))
        count += 1
    ordered = dict(sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])))
    return {"count": count, "by_reason": ordered}


def _is_metrics(value: Any) -> bool:
    return isinstance(value, Mapping) and "top1" in value


def write_report(
    out_dir: str | Path,
    metrics: Mapping,
    class_names: Sequence[str],
    worst: Sequence[Mapping] = (),
    skipped: Iterable[tuple[str, str]] = (),
    extra: Mapping | None = None,
    title: str = "actrec evaluation report",
    sections: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the evaluation report into out_dir; returns {file name: path} of the files written.

    metrics: compute_metrics(...) output; worst: worst_misclassified(...) output;
    skipped: (path, reason) of clips that could not be scored; extra: JSON-serialisable run
    details stored under "extra" in metrics.json. Values of `extra` that are metrics dicts
    (e.g. {"single-view": m1, "multi-view (10 clips)": m2}) are also shown side by side in
    report.md; other scalar values are listed as run details. sections: more Markdown (each starting with its
    own `## heading`) placed after the headline metrics, e.g. kws_metrics.markdown_section for an open-set run.
    Files: metrics.json, confusion_matrix.csv / .png (row-normalised), per_class.png,
    reliability.png, report.md (links the PNGs), each written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = [str(c) for c in class_names]
    confusion = np.asarray(metrics["confusion"], dtype=np.int64)
    if confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {confusion.shape} for {len(class_names)} class names")
    skipped_info = group_skipped(skipped)
    worst = [dict(w) for w in worst]
    paths = {name: out_dir / name for name in REPORT_FILES}

    document = dict(metrics)
    document["skipped"] = skipped_info
    document["worst_misclassified"] = worst
    document["extra"] = dict(extra) if extra else {}
    atomic_write_json(paths["metrics.json"], document)

    normalised = row_normalised(confusion)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted"] + class_names)
    for name, row in zip(class_names, normalised):
        writer.writerow([name] + [f"{v:.6f}" for v in row])
    atomic_write_text(paths["confusion_matrix.csv"], buffer.getvalue())

    plot_confusion(confusion, class_names, paths["confusion_matrix.png"])
    plot_per_class(metrics["per_class"], paths["per_class.png"])
    plot_reliability(metrics["reliability"], metrics.get("ece"), paths["reliability.png"], num_clips=metrics.get("num_clips"))
    atomic_write_text(paths["report.md"], _markdown(title, metrics, class_names, worst, skipped_info, extra or {}, sections))
    return paths


def _markdown(title: str, metrics: Mapping, class_names: Sequence[str], worst: Sequence[Mapping], skipped: dict, extra: Mapping,
              sections: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    n_skipped = skipped["count"]
    lines += [
        f"{metrics.get('num_clips', 0)} clips evaluated over {len(class_names)} classes"
        + (f"; {n_skipped} skipped (see [below](#skipped-clips))." if n_skipped else "; none skipped."),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, _ in _HEADLINE:
        if key == "top5" and metrics.get("top5") is None:
            continue
        label = _HEADLINE_LONG[key] + (f" ({metrics.get('ece_bins', len(metrics.get('reliability', [])))} bins)" if key == "ece" else "")
        lines.append(f"| {label} | {format_value(metrics.get(key))} |")
    lines.append(f"| clips evaluated | {metrics.get('num_clips', 0)} |")
    lines.append(f"| clips skipped | {n_skipped} |")
    lines.append("")
    lines += [section.rstrip("\n") + "\n" for section in sections]

    protocols = {str(name): value for name, value in extra.items() if _is_metrics(value)}
    details = {str(name): value for name, value in extra.items() if not _is_metrics(value) and not isinstance(value, (Mapping, list, tuple))}
    if protocols:
        names = list(protocols)
        lines += ["## Test protocols", "", "| metric | " + " | ".join(markdown_cell(n) for n in names) + " |", "|---|" + "---|" * len(names)]
        for key, _ in _HEADLINE:
            if all(protocols[n].get(key) is None for n in names):
                continue
            lines.append(f"| {_HEADLINE_LONG[key]} | " + " | ".join(format_value(protocols[n].get(key)) for n in names) + " |")
        lines.append("| clips | " + " | ".join(str(protocols[n].get("num_clips", "—")) for n in names) + " |")
        lines.append("")
    if details:
        lines += ["## Run details", ""] + [f"- {markdown_cell(k)}: {markdown_cell(format_value(v, 4))}" for k, v in details.items()] + [""]

    lines += [
        "## Plots",
        "",
        "- [confusion matrix (row-normalised)](confusion_matrix.png) — values in [confusion_matrix.csv](confusion_matrix.csv)",
        "- [per-class F1](per_class.png)",
        "- [reliability diagram](reliability.png)",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![per-class F1](per_class.png)",
        "",
        "![reliability diagram](reliability.png)",
        "",
        "## Per class",
        "",
        "Sorted by F1 (worst first). Precision of a class never predicted and recall of a class with no clips are shown as 0.",
        "",
        "| class | precision | recall | F1 | support | predicted |",
        "|---|---|---|---|---|---|",
    ]
    per_class = metrics.get("per_class", {})
    for name, row in sorted(per_class.items(), key=lambda item: (item[1]["f1"], -item[1]["support"], item[0])):
        lines.append(
            f"| {markdown_cell(name)} | {format_value(row['precision'])} | {format_value(row['recall'])} | {format_value(row['f1'])} | {row['support']} | {row.get('predicted', '—')} |"
        )
    lines.append("")

    lines += ["## Most confidently wrong clips", ""]
    if worst:
        lines += ["| # | clip | true (prob) | predicted (prob) | top-3 |", "|---|---|---|---|---|"]
        for i, w in enumerate(worst, 1):
            top3 = ", ".join(f"{markdown_cell(label)} {format_value(float(p))}" for label, p in w.get("top3", []))
            true = f"{markdown_cell(w['true'])} ({format_value(w.get('true_prob'))})"
            pred = f"{markdown_cell(w['predicted'])} ({format_value(w.get('confidence'))})"
            lines.append(f"| {i} | {markdown_code(w['path'])} | {true} | {pred} | {top3} |")
    else:
        lines.append("No misclassified clips.")
    lines.append("")

    lines += ["## Skipped clips", ""]
    if skipped["count"]:
        for reason, clip_paths in skipped["by_reason"].items():
            lines.append(f"- **{markdown_cell(reason)}** ({len(clip_paths)}):")
            lines += [f"  - {markdown_code(p)}" for p in clip_paths]
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def new_figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure on its own Agg canvas (headless; pyplot's global backend untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write fig as a PNG atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path).with_suffix(".png")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_confusion(confusion: Any, class_names: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """Row-normalised confusion matrix (PNG): confusion int [K, K], rows = true class."""
    counts = np.asarray(confusion, dtype=np.int64)
    k = len(class_names)
    normalised = row_normalised(counts)
    longest = min(max((len(str(c)) for c in class_names), default=1), 30)
    cell = 0.6 if k <= ANNOTATE_MAX_CLASSES else 0.18  # inches per class
    side = float(np.clip(cell * k, 3.0, 24.0))
    label_room = longest * 0.075 if k <= TICK_LABELS_MAX_CLASSES else 0.3
    fig = new_figure(side + label_room + 1.8, side + label_room + 0.8, dpi=100 if k <= 40 else 130)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    fig.colorbar(image, ax=ax, shrink=0.6 if k > 20 else 0.8, label="fraction of the true class")
    if k <= TICK_LABELS_MAX_CLASSES:
        small = k > ANNOTATE_MAX_CLASSES
        names = [str(c) for c in class_names]
        ax.set_xticks(range(k), names, rotation=90 if small else 45, ha="center" if small else "right",
                      rotation_mode="default" if small else "anchor", fontsize=6 if small else 10)
        ax.set_yticks(range(k), names, fontsize=6 if small else 10)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= ANNOTATE_MAX_CLASSES:
        for i in range(k):
            for j in range(k):
                if counts[i, j] == 0 and (i != j or counts[i].sum() == 0):
                    continue  # blank: no confusion, or a class with no clips
                value = normalised[i, j]
                ax.text(j, i, f"{value:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=9 if k <= 8 else 7,
                        color="white" if value > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    n = int(counts.sum())
    ax.set_title(title or f"Confusion matrix, row-normalised ({n} clips)")
    return save_figure(fig, path)


def plot_per_class(per_class: Mapping[str, Mapping], path: str | Path, metric: str = "f1") -> Path:
    """Horizontal bars of one per-class metric (default F1), sorted, best at the top (PNG).

    Classes with no true clips and no predictions are left out. With more than
    PER_CLASS_PLOT_MAX classes, only the worst and the best halves of that many are shown.
    """
    rows = [(name, float(r[metric]), int(r["support"])) for name, r in per_class.items() if r["support"] > 0 or r.get("predicted", 0) > 0]
    rows.sort(key=lambda r: (r[1], r[2]))
    total = len(rows)
    left_out = len(per_class) - total
    subtitle = f" ({left_out} class{'es' if left_out != 1 else ''} with no clips or predictions left out)" if left_out else ""
    if total > PER_CLASS_PLOT_MAX:
        half = PER_CLASS_PLOT_MAX // 2
        rows = rows[:half] + [("…", float("nan"), -1)] + rows[-half:]
        subtitle = f" — worst {half} and best {half} of {total} classes" + subtitle
    label = {"f1": "F1", "recall": "recall", "precision": "precision"}.get(metric, metric)
    longest = max((len(r[0]) for r in rows), default=1)
    fig = new_figure(6.0 + min(longest, 40) * 0.07, max(2.5, 0.3 * len(rows) + 1.2))
    ax = fig.add_subplot()
    if rows:
        y = np.arange(len(rows))
        values = np.array([r[1] for r in rows])
        ax.barh(y, np.nan_to_num(values), color="#4c72b0", height=0.7)
        ax.set_yticks(y, [r[0] for r in rows], fontsize=9 if len(rows) <= 30 else 7)
        for yi, (_, v, n) in zip(y, rows):
            if n >= 0:
                ax.text(min(v, 1.0) + 0.01, yi, f"{v:.2f} (n={n})", va="center", fontsize=8 if len(rows) <= 30 else 6)
        ax.set_ylim(-0.6, len(rows) - 0.4)
    else:
        ax.text(0.5, 0.5, "no clips", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.2)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.axvline(1.0, color="0.7", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{label} (n = true clips)")
    ax.set_title(f"Per-class {label}{subtitle}")
    return save_figure(fig, path)


def plot_reliability(reliability: Sequence[Mapping], ece: float | None, path: str | Path, num_clips: int | None = None) -> Path:
    """Reliability diagram (PNG): per-bin accuracy bars against the diagonal, and a histogram of clip counts."""
    fig = new_figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lower = np.array([b["lower"] for b in reliability], dtype=float)
    upper = np.array([b["upper"] for b in reliability], dtype=float)
    counts = np.array([b["count"] for b in reliability], dtype=float)
    filled = counts > 0
    width = upper - lower
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in reliability], dtype=float)
    conf = np.array([b["confidence"] if b["confidence"] is not None else 0.0 for b in reliability], dtype=float)
    top.plot([0, 1], [0, 1], ls="--", color="0.4", label="perfect calibration")
    if filled.any():
        top.bar(lower[filled], acc[filled], width=width[filled], align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
        gap_bottom = np.minimum(acc, conf)[filled]
        top.bar(lower[filled], np.abs(conf - acc)[filled], bottom=gap_bottom, width=width[filled], align="edge",
                facecolor="none", edgecolor="#c44e52", hatch="///", lw=1.0, zorder=3, label="gap to mean confidence")
        top.plot(conf[filled], acc[filled], "o", color="black", ms=3, zorder=4, label="(mean confidence, accuracy)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    clips = f", {num_clips} clips" if num_clips is not None else ""
    top.set_title(f"Reliability diagram — ECE {format_value(ece)} ({len(reliability)} bins{clips})")
    bottom.bar(lower, counts, width=width, align="edge", color="0.5", edgecolor="white")
    bottom.set_xlabel("confidence (max class probability)")
    bottom.set_ylabel("clips")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- long videos


def _check_windows(times: Any, probs: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be float [W, K] with W >= 1, got shape {probs.shape}")
    if times.shape != (probs.shape[0],):
        raise ValueError(f"times must be float [W] with W = {probs.shape[0]}, got shape {times.shape}")
    if len(class_names) != probs.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {probs.shape[1]} columns of probs")
    return times, probs


def plot_timeline(times: Any, probs: Any, class_names: Sequence[str], path: str | Path, top: int = 5, title: str | None = None) -> Path:
    """Label probabilities over a long video (PNG).

    times: float [W] window centres in seconds; probs: float [W, K] per-window probabilities.
    Shows the `top` classes with the highest peak probability: a heatmap (one row per class,
    cells span the windows) above a line plot of the same classes, sharing the time axis.
    """
    times, probs = _check_windows(times, probs, class_names)
    order = np.argsort(times, kind="stable")
    times, probs = times[order], probs[order]
    k = probs.shape[1]
    top = max(1, min(top, k))
    chosen = np.lexsort((-probs.mean(axis=0), -probs.max(axis=0)))[:top]  # by peak, then by mean
    names = [str(class_names[c]) for c in chosen]
    # cell edges halfway between window centres; a single window spans 1 s
    if len(times) > 1:
        mids = (times[1:] + times[:-1]) / 2
        edges = np.concatenate([[times[0] - (mids[0] - times[0])], mids, [times[-1] + (times[-1] - mids[-1])]])
    else:
        edges = np.array([times[0] - 0.5, times[0] + 0.5])
    longest = max(len(n) for n in names)
    fig = new_figure(10.0 + min(longest, 30) * 0.05, 2.6 + 0.35 * top + 2.2)
    heat, lines = fig.subplots(2, 1, sharex=True, height_ratios=[0.35 * top + 0.6, 2.2])
    mesh = heat.pcolormesh(edges, np.arange(top + 1) - 0.5, probs[:, chosen].T, cmap="viridis", vmin=0.0, vmax=1.0, shading="flat")
    heat.set_yticks(range(top), names, fontsize=9)
    colors = [f"C{i % 10}" for i in range(top)]
    for tick, color in zip(heat.get_yticklabels(), colors):
        tick.set_color(color)  # the same colour as the class's line below
    heat.set_ylim(top - 0.5, -0.5)  # the strongest class on top
    fig.colorbar(mesh, ax=heat, label="probability", pad=0.01)
    heat.set_title(title or f"Top {top} of {k} classes over time ({len(times)} window{'s' if len(times) != 1 else ''})")
    for c, name, color in zip(chosen, names, colors):
        lines.plot(times, probs[:, c], color=color, lw=1.5, marker="." if len(times) <= 60 else None, label=name)
    lines.set_ylim(0, 1.02)
    lines.set_ylabel("probability")
    lines.set_xlabel("time (s, window centre)")
    lines.grid(alpha=0.3)
    lines.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(top, 5), fontsize=8, frameon=False)
    lines.set_xlim(edges[0], edges[-1])
    return save_figure(fig, path)


def write_timeline_csv(path: str | Path, starts: Any, ends: Any, probs: Any, class_names: Sequence[str],
                       labels: Sequence[str] | None = None) -> Path:
    """Per-window predictions of a long video as CSV (one row per window, in the given order).

    starts, ends: float [W] window bounds in seconds; probs: float [W, K]; labels: W decided labels (e.g.
    kws_metrics.decided_labels at a threshold) or None.
    Columns: start_s, end_s, top_label, top_prob, [label,] then one column per class (header = class name).
    """
    starts, probs = _check_windows(starts, probs, class_names)
    ends = np.asarray(ends, dtype=np.float64)
    if ends.shape != starts.shape:
        raise ValueError(f"ends must be float [W] with W = {starts.shape[0]}, got shape {ends.shape}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if labels is not None and len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels for {len(probs)} windows")
    label_column = [] if labels is None else ["label"]
    writer.writerow(["start_s", "end_s", "top_label", "top_prob"] + label_column + [str(c) for c in class_names])
    best = probs.argmax(axis=1)
    for w, (s, e, b, row) in enumerate(zip(starts, ends, best, probs)):
        decided = [] if labels is None else [str(labels[w])]
        writer.writerow([f"{s:.3f}", f"{e:.3f}", str(class_names[b]), f"{row[b]:.6f}"] + decided + [f"{v:.6f}" for v in row])
    path = Path(path)
    atomic_write_text(path, buffer.getvalue())
    return path
