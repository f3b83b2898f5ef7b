"""A trained run ready for raw clips: its config, classes, frame encoder and model (or one of its exported files).

    clip --decode_clip (the run's sampling; K windows x crops for multi-view testing)--> frames [V, T, S, S, 3], MFCC [F, C]
        keras:  --ClipEncoder (the run's frame CNN)--> frame_features [V, T, D] --model.keras--> probabilities [V, K]
        tflite: --clip_inputs (raw frames, raw waveform)--> the exported graph, one view at a time --> [V, K]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.rundir import RunDir
from pipeline.runtime.decode import decode_clip, without_modality


def model_spec(cfg: Config, index: dict):
    """The ModelSpec of a run: input shapes from its features/index.json, the class count, MFCC statistics."""
    from pipeline.models import ModelSpec

    f = index["features"]

    def shape(name):
        return tuple(f[name]["shape"]) if name in f else None

    raw_audio = cfg.train.source == "raw_audio"  # the model takes the waveform and computes its own MFCCs
    return ModelSpec(
        num_classes=len(index["classes"]),
        frame_features=shape("frame_features")[1:] if "frame_features" in f else None,
        frames=shape("frames")[1:4] if "frames" in f else None,
        mfcc=None if raw_audio else shape("mfcc"),
        waveform=f["waveform"]["shape"][0] if "waveform" in f else None,
        mfcc_stats=index.get("mfcc_stats"),
        frame_stats=index.get("frame_stats"),
        preprocess=cfg.preprocess,
        seed=cfg.seed,
    )


def load_trained_model(path):
    """A .keras file `actrec train` wrote; a damaged or unsafe file is a one-line error naming it."""
    from pipeline.models import load_model

    try:
        return load_model(path)
    except Exception as e:  # noqa: BLE001  (Keras raises ValueError, OSError, zipfile errors... for one cause: the file)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "Lambda" in reason or "safe_mode" in reason:
            reason = "it holds a Lambda layer (arbitrary code), which safe mode refuses to load"
        raise UserError(f"{path}: not a model actrec can load ({reason[:200]}); retrain with `actrec train --overwrite`") from None


def input_names(model) -> list[str]:
    """A Keras model's input names, in its own order."""
    return [t.name.split(":")[0] for t in model.inputs] if hasattr(model, "inputs") else []


def check_drop(modalities, drop: str | None) -> None:
    """`--drop MODALITY` needs a run that reads both modalities: a one-line UserError otherwise."""
    if drop is not None and (drop not in modalities or len(modalities) < 2):
        raise UserError(f"--drop {drop}: this run reads {' and '.join(modalities)} only; dropping a modality needs an "
                        f"audio-visual run (preprocess.modalities [video, audio])")


class RunModel:
    """RunModel(run_dir, views=1, crops=1, model="keras"): a run's model on raw clips.

    model="keras" runs RUN/model.keras on the run's cached-feature pipeline (frame encoder, librosa MFCC);
    a path to an exported .tflite file runs that file through the TFLite interpreter on the raw frames and
    waveform, as an app would (runtime.tflite.TFLiteClassifier).
    predict_clip(path) -> probabilities float32 [V, K] (one row per view).
    drop="audio"|"video": an audio-visual run's clips with that modality removed (decode.without_modality), through
    the same graph.
    """

    def __init__(self, run_dir, views: int = 1, crops: int = 1, model: str = "keras", allow_unfinished: bool = False,
                 drop: str | None = None):
        from pipeline.runtime.encode import ClipEncoder

        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.model_name = str(model)
        if model == "keras":
            self.run.require_model(allow_unfinished)
        self.cfg: Config = self.run.config()
        self.index = self.run.read_index()
        self.classes: list[str] = self.index["classes"]
        self.views, self.crops = views, crops
        p = self.cfg.preprocess
        check_drop(p.modalities, drop)
        self.drop = drop
        sampling = {"sampling": "multi_clip", "num_clips": views} if views > 1 else {"sampling": "uniform" if p.sampling == "segments" else p.sampling}
        self.clip_cfg = dataclasses.replace(self.cfg, preprocess=dataclasses.replace(p, **sampling))
        self.tflite = None
        if model != "keras":
            from pipeline.runtime.tflite import TFLiteClassifier, raw_input_config

            self.tflite = TFLiteClassifier(model)
            if self.tflite.labels != self.classes:
                raise UserError(f"{model}: its labels.txt does not list the run's classes ({', '.join(self.classes)}); export it from {self.run}")
            if self.run.model.is_file() and Path(model).stat().st_mtime < self.run.model.stat().st_mtime:
                print(f"warning: {model} is older than {self.run.model} (retrained since): run `actrec export --run-dir {self.run}` "
                      f"to export the current model", file=sys.stderr)
            self.clip_cfg = raw_input_config(self.clip_cfg)  # the exported graph takes the raw waveform
            return
        self.encoder = ClipEncoder(self.cfg, self.run.features)
        self.encoder.setup()
        self.model = load_trained_model(self.run.model)
        self.input_names = input_names(self.model)

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

    def decode(self, path, start: float | None = None) -> dict:
        """The run's own preprocessing of one file (or of its window at `start` seconds), with the evaluation sampling."""
        crops = ("start", "center", "end") if self.crops == 3 else ("center",)
        decoded = decode_clip(path, self.clip_cfg, crops=crops, start=start)
        return decoded if self.drop is None else without_modality(decoded, self.drop, self.clip_cfg)

    def predict_clip(self, path, start: float | None = None) -> np.ndarray:
        return self.predict_decoded(self.decode(path, start))

    def predict_decoded(self, decoded: dict) -> np.ndarray:
        """A decode_clip result -> probabilities float32 [V, K]."""
        if self.tflite is not None:
            from pipeline.runtime.tflite import clip_inputs

            views = len(decoded.get("frame_lengths", [0]))
            return np.stack([self.tflite.predict(clip_inputs(decoded, v)) for v in range(views)])
        arrays = self.encoder.encode([decoded])[0]
        # predict_on_batch, not predict: predict builds a tf.data pipeline per call, several times the model's own time
        return np.asarray(self.model.predict_on_batch(self.model_inputs(arrays)))
