"""Evaluate stage: a trained run on raw clips or WAVs -> DIR/eval/<name>/ metrics.json, report.md, plots.

    raw clip --decode_clip (the preprocess stage's own function)--> frames [V, T, S, S, 3], MFCC [F, C]
        --the run's frame encoder--> features [V, T, D] --model--> probabilities [V, K]
        --mean over views--> [K]    (multi-view testing: K temporal windows x optional 3 spatial crops)

Clips come from the run's own dataset split (default: test), another dataset folder in any
layout the indexer knows (`--data`, holding all or some of the run's classes), or a manifest.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.media import MediaError
from pipeline.preprocess import ClipJob, ClipProcessor, decode_clip, resolve_rows
from pipeline.train import read_index, run_config


class RunModel:
    """A trained run ready for raw clips: its config, classes, frame encoder and model.

    model="keras" runs DIR/model.keras on the run's cached-feature pipeline (frame encoder, librosa
    MFCC); a path to an exported .tflite file runs that file through the TFLite interpreter on the
    raw frames and waveform, as an app would (pipeline.export.TFLiteClassifier).
    predict_clip(path) -> probabilities float32 [V, K] (one row per view).
    """

    def __init__(self, run_dir: str | Path, views: int = 1, crops: int = 1, model: str = "keras"):
        from pipeline.models import load_model

        self.run_dir = Path(run_dir)
        self.model_name = str(model)
        if model == "keras" and not (self.run_dir / "model.keras").is_file():
            raise UserError(f"{self.run_dir}: no trained model (model.keras); run `actrec train --run-dir {self.run_dir}` first")
        self.cfg: Config = run_config(self.run_dir)
        self.index = read_index(self.run_dir)
        self.classes: list[str] = self.index["classes"]
        self.views, self.crops = views, crops
        p = self.cfg.preprocess
        sampling = {"sampling": "multi_clip", "num_clips": views} if views > 1 else {"sampling": "uniform" if p.sampling == "segments" else p.sampling}
        self.clip_cfg = dataclasses.replace(self.cfg, preprocess=dataclasses.replace(p, **sampling))
        self.tflite = None
        if model != "keras":
            from pipeline.export import TFLiteClassifier, raw_input_config

            self.tflite = TFLiteClassifier(model)
            if self.tflite.labels != self.classes:
                raise UserError(f"{model}: its labels.txt does not list the run's classes ({', '.join(self.classes)}); export it from {self.run_dir}")
            self.clip_cfg = raw_input_config(self.clip_cfg)  # the exported graph takes the raw waveform
            return
        self.processor = ClipProcessor(self.cfg, self.run_dir / "features")
        self.processor.setup()
        self.model = load_model(self.run_dir / "model.keras")
        self.input_names = [t.name.split(":")[0] for t in self.model.inputs]

    def model_inputs(self, arrays: dict) -> dict:
        """Cached-feature arrays of one clip -> a batch of V model inputs (audio repeated per view)."""
        views = len(arrays.get("frame_lengths", [1]))
        batch = {}
        for name in self.input_names:
            value = np.asarray(arrays[name])
            if name in ("frame_features", "frames", "frame_lengths"):
                batch[name] = value.astype(np.int32) if name == "frame_lengths" else value
            else:
                batch[name] = np.repeat(value[None] if value.ndim else np.array([value]), views, axis=0)
                if value.dtype.kind == "i" or name in ("mfcc_length", "num_samples"):
                    batch[name] = batch[name].astype(np.int32)
        return batch

    def predict_clip(self, path: str | Path) -> np.ndarray:
        job = ClipJob(str(Path(path).parent), _row(Path(path).name), 0)
        crops = ("start", "center", "end") if self.crops == 3 else ("center",)
        return self.predict_decoded(decode_clip(job, self.clip_cfg, crops=crops))

    def predict_decoded(self, decoded: dict) -> np.ndarray:
        """A decode_clip result -> probabilities float32 [V, K]."""
        if self.tflite is not None:
            from pipeline.export import clip_inputs

            views = len(decoded.get("frame_lengths", [0]))
            return np.stack([self.tflite.predict(clip_inputs(decoded, v)) for v in range(views)])
        arrays = self.processor.encode([decoded])[0]
        return np.asarray(self.model.predict(self.model_inputs(arrays), verbose=0))


def _row(relpath: str):
    from data_prep.index import ManifestRow

    return ManifestRow(relpath, "", "test", "")


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
) -> dict:
    """Score the run's model on raw clips; writes DIR/eval/<name>/ and returns the metrics dict.

    model: "keras" (DIR/model.keras) or the path of an exported .tflite file.
    """
    from pipeline.progress import progress_bar

    from pipeline.report import compute_metrics, multi_view_scores, summary_line, worst_misclassified, write_report

    if views < 1 or crops not in (1, 3):
        raise UserError(f"--views must be >= 1 (got {views}) and --crops 1 or 3 (got {crops})")
    runner = RunModel(run_dir, views, crops, model)
    cfg = runner.cfg
    if data is not None:
        # Another folder: every clip counts unless the folder has official split files.
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data), layout="auto", classes=[], manifest=None,
                                                                val_fraction=0.0, test_fraction=0.0))
    rows, found_classes, problems = resolve_rows(cfg, manifest)
    unknown = sorted(set(found_classes) - set(runner.classes))
    if unknown:
        raise UserError(f"{data or manifest}: class '{unknown[0]}' is not one the run knows; known: {', '.join(runner.classes)}")
    if data is None or any(r.split == split for r in rows):
        rows = [r for r in rows if r.split == split]
    if not rows:
        raise UserError(f"{data or cfg.data.root}: no clips in split '{split}'")

    root = Path(cfg.data.root)
    # Files the indexer left out belong to no split; report them when a whole folder is evaluated.
    labels, view_probs, clip_ids, skipped = [], [], [], list(problems) if data is not None else []
    start = time.time()
    for row in progress_bar(rows, desc="evaluate", unit="clip", disable=not progress):
        try:
            probs = runner.predict_clip(root / row.path)
        except MediaError as e:
            skipped.append((row.path, str(e)))
            continue
        labels.append(runner.classes.index(row.label))
        view_probs.append(probs)
        clip_ids.append(row.path)
    if not labels:
        raise UserError(f"{root}: none of the {len(rows)} clips could be decoded (first: {skipped[0][0]}: {skipped[0][1]})")
    seconds = time.time() - start

    labels = np.array(labels)
    view_probs = np.stack(view_probs)  # [N, V, K]
    probs = multi_view_scores(view_probs)
    metrics = compute_metrics(labels, probs, runner.classes)
    extra = {"clips_per_second": round(len(labels) / seconds, 2), "views": views, "crops": crops,
             "model": str(model), "run_dir": str(run_dir), "data": str(data or cfg.data.root), "split": split}
    if view_probs.shape[1] > 1:
        centre = view_probs[:, view_probs.shape[1] // 2]
        extra["single-view (centre)"] = compute_metrics(labels, centre, runner.classes)
        extra[f"multi-view ({view_probs.shape[1]} views)"] = metrics
    name = name or f"{split if data is None else Path(data).name}" + (f"-v{views}" if views > 1 else "") + ("-c3" if crops == 3 else "") + ("" if model == "keras" else f"-{Path(model).stem}")
    out_dir = Path(run_dir) / "eval" / name
    worst = worst_misclassified(labels, probs, clip_ids, runner.classes)
    write_report(out_dir, metrics, runner.classes, worst=worst, skipped=skipped, extra=extra,
                 title=f"actrec evaluation: {Path(run_dir).name} on {extra['data']} ({split})")
    print(f"evaluate: {summary_line(metrics)}; {len(skipped)} skipped -> {out_dir}")
    return metrics
