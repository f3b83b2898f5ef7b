"""Running an exported .tflite file the way an app runs it: one clip, raw frames and waveform in.

    decode_clip result (a config through `raw_input_config`: the raw waveform kept)
        --clip_inputs(decoded, view)--> frames        uint8   [T, S, S, 3]
                                        frame_lengths int32   []
                                        waveform      float32 [N]
                                        num_samples   int32   []
        --TFLiteClassifier.predict (batch axis added, inputs by name)--> probabilities float32 [K]

The file is read through the TFLite interpreter with its default XNNPACK delegate, as a phone's runtime
does; `preprocessing.json` and `labels.txt` beside it give the input shapes, dtypes, defaults and class
names. TensorFlow is imported only when a classifier is made.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.errors import UserError

SIGNATURE = "serving_default"  # the one signature of every exported file
OUTPUT = "probabilities"  # its one output: float32 [B, K]


def raw_input_config(cfg: Config) -> Config:
    """The run's config with decode_clip also returning the raw waveform (what the deployable graph takes).

    decode_clip keeps the waveform only for runs without a frame encoder; the exported graph
    computes MFCCs itself for every audio run.
    """
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, encoder="none"))


def clip_inputs(decoded: dict, view: int = 0) -> dict[str, np.ndarray]:
    """One view of a decode_clip result as the deployable graph's inputs (no batch axis).

    frames uint8 [T, S, S, 3], frame_lengths int32 [], waveform float32 [N], num_samples int32 [].
    """
    inputs = {}
    if "frames" in decoded:
        inputs["frames"] = decoded["frames"][view]
        inputs["frame_lengths"] = np.int32(decoded["frame_lengths"][view])
    if "waveform" in decoded:
        inputs["waveform"] = decoded["waveform"]
        inputs["num_samples"] = np.int32(decoded["num_samples"])
    return inputs


class TFLiteClassifier:
    """An exported .tflite file run the way an app runs it, one clip at a time.

    TFLiteClassifier(path, threads=2) reads preprocessing.json and labels.txt beside the file.
    predict({'frames': uint8 [T, S, S, 3], 'frame_lengths': int, 'waveform': float32 [N], 'num_samples': int})
        -> probabilities float32 [K]
    Inputs the file does not take are ignored; a missing length means a full-length clip.
    head_*.tflite files take the cached features instead (frame_features [T, D], mfcc [F, C], lengths).
    """

    def __init__(self, path: str | Path, threads: int = 2):
        import tensorflow as tf

        self.path = Path(path)
        if self.path.suffix != ".tflite":
            raise UserError(f"{self.path}: not a .tflite file (expected a file written by `actrec export`, or keras)")
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such file; `actrec export --run-dir RUN` writes RUN/export/*.tflite")
        meta_file = self.path.parent / "preprocessing.json"
        if not meta_file.is_file():
            raise UserError(f"{meta_file}: missing; the .tflite file must sit beside the preprocessing.json `actrec export` wrote")
        self.preprocessing = json.loads(meta_file.read_text())
        self.labels = (self.path.parent / self.preprocessing["labels_file"]).read_text().splitlines()
        graph = self.preprocessing["head"] if self.path.name.startswith("head") else self.preprocessing
        self.inputs = {spec["name"]: spec for spec in graph["inputs"]}
        try:
            self.interpreter = tf.lite.Interpreter(model_path=str(self.path), num_threads=threads)
            # allocate_tensors() applies the default XNNPACK delegate, as an app's runtime does; a signature
            # runner made before it runs the reference kernels, which hid an XNNPACK-only float16 failure
            self.interpreter.allocate_tensors()
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as e:  # a truncated or foreign file: the interpreter's message is long
            raise UserError(f"{self.path}: not a TFLite model `actrec export` wrote ({str(e).splitlines()[0][:120]})") from None

    def predict(self, inputs: dict) -> np.ndarray:
        feed = {}
        for name, spec in self.inputs.items():
            if name in inputs:
                value = np.asarray(inputs[name], dtype=spec["dtype"])
            elif "default" in spec:
                value = np.asarray(spec["default"], dtype=spec["dtype"])
            else:
                raise UserError(f"{self.path.name}: input '{name}' missing (expected {spec['dtype']} {spec['shape'][1:]})")
            if list(value.shape) != spec["shape"][1:]:
                raise UserError(f"{self.path.name}: input '{name}' must have shape {spec['shape'][1:]}, got {list(value.shape)}")
            feed[name] = value[None]
        return self.runner(**feed)[OUTPUT][0]
