"""Evaluate stage: a trained run on raw clips or WAVs -> RUN/eval/<name>/ metrics.json, report.md, plots.

    raw clip --runtime.decode_clip (preprocessing's own function)--> frames [V, T, S, S, 3], MFCC [F, C]
        --the run's frame encoder--> features [V, T, D] --model--> probabilities [V, K]
        --mean over views--> [K]    (multi-view testing: K temporal windows x optional 3 spatial crops)

Clips come from the run's own dataset split (default: test), another dataset folder in any
layout the indexer knows (`--data`, holding all or some of the run's classes), or a manifest.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.datasets import resolve_rows
from pipeline.errors import UserError
from pipeline.labels import is_open_set
from pipeline.media import MediaError
from pipeline.rundir import RunDir, read_json
from pipeline.runtime.keras_model import RunModel


def _selected_on(run: RunDir) -> str | None:
    """The split training chose its best epoch on (train_done.json), if known."""
    return read_json(run.train_done).get("val_split") if run.train_done.is_file() else None


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str = "test",
    views: int = 1,
    crops: int = 1,
    name: str | None = None,
    progress: bool = True,
    model: str = "keras",
    allow_unfinished: bool = False,
    drop: str | None = None,
) -> dict:
    """Score the run's model on raw clips; writes DIR/eval/<name>/ and returns the metrics dict.

    model: "keras" (DIR/model.keras) or the path of an exported .tflite file.
    drop: "audio" or "video": an audio-visual run scored with that modality removed from every clip (silence /
    zero frames with length 0, through the same graph), to measure what the other modality does alone.
    """
    from pipeline.kws_metrics import DET_FILE, DetCurve, keyword_spotting_metrics, markdown_section, operating_point_summary, plot_det
    from pipeline.progress import progress_bar
    from pipeline.report import compute_metrics, multi_view_scores, summary_line, worst_misclassified, write_report

    if views < 1 or crops not in (1, 3):
        raise UserError(f"--views must be >= 1 (got {views}) and --crops 1 or 3 (got {crops})")
    runner = RunModel(run_dir, views, crops, model, allow_unfinished, drop=drop)
    cfg = runner.cfg
    if data is not None:
        # Another folder: every clip counts unless the folder has official split files.
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data), layout="auto", classes=[], manifest=None,
                                                                val_fraction=0.0, test_fraction=0.0))
    elif manifest is None and not Path(cfg.data.root).is_dir():
        raise UserError(f"{cfg.data.root}: the run's dataset folder is not there (moved, or another machine); "
                        f"pass --data DIR to evaluate on the clips where they are now")
    rows, found_classes, problems = resolve_rows(cfg, manifest, own_dataset=data is None)
    unknown = sorted(set(found_classes) - set(runner.classes))
    if unknown:
        raise UserError(f"{data or manifest}: class '{unknown[0]}' is not one the run knows; known: {', '.join(runner.classes)}")
    if data is None and manifest is None and sorted(found_classes) != sorted(runner.classes):
        raise UserError(f"{cfg.data.root}: holds classes {', '.join(sorted(found_classes))}, not the run's ({', '.join(runner.classes)}): "
                        f"the dataset changed since preprocessing; pass --data DIR to evaluate on it anyway")
    if data is None or any(r.split == split for r in rows):
        rows = [r for r in rows if r.split == split]
    if not rows:
        raise UserError(f"{data or cfg.data.root}: no clips in split '{split}'")

    name = name or f"{split if data is None else Path(data).name}" + (f"-v{views}" if views > 1 else "") + ("-c3" if crops == 3 else "") + ("" if model == "keras" else f"-{Path(model).stem}") + (f"-no-{drop}" if drop else "")
    out_dir = runner.run.eval_dir(name)
    data_path = str(Path(data or cfg.data.root).absolute())
    earlier = read_json(out_dir / "metrics.json").get("extra", {}).get("data") if (out_dir / "metrics.json").is_file() else None
    if earlier is not None and str(Path(earlier).absolute()) != data_path:
        raise UserError(f"{out_dir}: holds the report on another dataset ({earlier}); pass --name to write this one elsewhere")

    root = Path(cfg.data.root)
    # Files the indexer left out belong to no split; report them when a whole folder is evaluated.
    labels, view_probs, clip_ids, skipped = [], [], [], list(problems) if data is not None else []
    no_audio = []  # clips of an audio-visual run classified from video only (no sound track)
    start = time.time()
    for row in (bar := progress_bar(rows, desc="evaluate", unit="clip", disable=not progress)):
        try:
            decoded = runner.decode(root / row.path, row.start)
            probs = runner.predict_decoded(decoded)
        except MediaError as e:
            skipped.append((row.clip_id, str(e)))
            continue
        if "warning" in decoded:
            no_audio.append(row.clip_id)
            bar.write(f"evaluate: warning: {row.clip_id}: {decoded['warning']}", file=sys.stderr)
        labels.append(runner.classes.index(row.label))
        view_probs.append(probs)
        clip_ids.append(row.clip_id)
    if not labels:
        raise UserError(f"{root}: none of the {len(rows)} clips could be decoded (first: {skipped[0][0]}: {skipped[0][1]})")
    seconds = time.time() - start

    labels = np.array(labels)
    view_probs = np.stack(view_probs)  # [N, V, K]
    probs = multi_view_scores(view_probs)
    metrics = compute_metrics(labels, probs, runner.classes)
    open_set = is_open_set(runner.classes)  # a keyword spotter: also false rejects / false accepts and the DET curve
    if open_set:
        metrics.update(keyword_spotting_metrics(labels, probs, runner.classes))
    extra = {"clips_per_second": round(len(labels) / seconds, 2), "views": views, "crops": crops,
             "model": str(model), "run_dir": str(runner.run), "data": data_path, "split": split}
    if drop:
        extra["dropped"] = f"{drop} (every clip scored from {'video' if drop == 'audio' else 'audio'} alone)"
    if no_audio:
        extra["no_audio_track"] = f"{len(no_audio)} clip(s) classified from video only, e.g. {no_audio[0]}"
    if data is None and split == "test" and _selected_on(runner.run) == "test":
        extra["caveat"] = ("no validation split: training chose its epochs on this test split (data.val_fraction=0), "
                           "so this accuracy is optimistic")
        print(f"evaluate: warning: {extra['caveat']}")
    if view_probs.shape[1] > 1:
        centre = view_probs[:, view_probs.shape[1] // 2]
        extra["single-view (centre)"] = compute_metrics(labels, centre, runner.classes)
        extra[f"multi-view ({view_probs.shape[1]} views)"] = metrics
    with runner.run.lock("evaluate"):
        worst = worst_misclassified(labels, probs, clip_ids, runner.classes)
        write_report(out_dir, metrics, runner.classes, worst=worst, skipped=skipped, extra=extra,
                     title=f"actrec evaluation: {runner.run.name} on {extra['data']} ({split}{f', {drop} dropped' if drop else ''})",
                     sections=[markdown_section(metrics)] if open_set else ())
        if open_set:
            plot_det(DetCurve.from_dict(metrics["det_curve"]), out_dir / DET_FILE, metrics["far_target"])
    kws = f" | {operating_point_summary(metrics)}" if open_set else ""
    print(f"evaluate: {summary_line(metrics)}{kws}; {len(skipped)} skipped -> {out_dir}")
    return metrics
