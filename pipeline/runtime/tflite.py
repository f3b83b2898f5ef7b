"""Running an exported .tflite file the way an app runs it: one clip, raw frames and waveform in.

    decode_clip result (a config through `raw_input_config`: the raw waveform kept)
        --clip_inputs(decoded, view)--> frames        uint8   [T, S, S, 3]
                                        frame_lengths int32   []
                                        waveform      float32 [N]
                                        num_samples   int32   []
        --TFLiteClassifier.predict (batch axis added, inputs by name)--> probabilities float32 [K]

    or, with no run directory and no TensorFlow (what an app or an edge device has):
    TFLiteClassifier("export/model_float.tflite").predict_file("clip.mp4")  -> probabilities float32 [K]

The file is read through LiteRT (`ai_edge_litert.interpreter.Interpreter`, the maintained TFLite runtime)
with its default XNNPACK delegate, as a phone's runtime does; `preprocessing.json` and `labels.txt` beside
it give the input shapes, dtypes, defaults, the decoding recipe and class names. Nothing here imports
TensorFlow or Keras: this module, pipeline.media and pipeline.config are all an inference-only install
needs (ai-edge-litert, numpy, opencv-python-headless, av, soundfile, librosa, omegaconf, pyyaml).
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
STREAM_SIGNATURE = "step"  # the one signature of a streaming file (model_stream_*.tflite)
SAMPLES = "samples"  # its audio input: the newest hop, float32 [1, H]
FRAME = "frame"  # or its video input: the newest frame, uint8 [1, S, S, 3]
FRAME_VALID, AUDIO_HOPS = "frame_valid", "audio_hops"  # an audio-visual step's: is there a frame, how many hops in `samples`


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


def file_inputs(path: str | Path, preprocessing: dict) -> list[dict[str, np.ndarray]]:
    """A media file decoded by the recipe of an export's preprocessing.json: one clip_inputs dict per view.

    The same media functions, with the same settings, as decode_clip for `actrec predict --model` (the
    run's evaluation sampling, the centre crop), without a run directory. Raises MediaError.
    """

    views: list[dict] = [{}]
    video, audio = preprocessing.get("video"), preprocessing.get("audio")
    if video is not None:
        from pipeline.media.video import read_clip

        clip = read_clip(path, video["num_frames"], video["frame_size"], video["sampling"], video["num_clips"])
        views = [{"frames": clip.frames[v], "frame_lengths": np.int32(clip.lengths[v])} for v in range(len(clip.lengths))]
    if audio is not None:
        from pipeline.media.audio import NO_AUDIO_WARNING, fit_length, load_audio

        # A video without sound: silence with num_samples 0, which the audio-visual graph reads as "audio absent"
        waveform = load_audio(path, audio["sample_rate"], absent_ok=video is not None)
        waveform, valid = fit_length(waveform, audio["num_samples"])
        for view in views:
            view.update(waveform=waveform, num_samples=np.int32(valid), **({} if valid else {"warning": NO_AUDIO_WARNING}))
    return views


def load_interpreter(path: str | Path, threads: int = 2):
    """A LiteRT interpreter of a .tflite file, tensors allocated (which applies the default XNNPACK delegate)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    # allocate_tensors() applies the default XNNPACK delegate, as an app's runtime does; a signature
    # runner made before it runs the reference kernels, which hid an XNNPACK-only float16 failure
    interpreter.allocate_tensors()
    return interpreter


class TFLiteClassifier:
    """An exported .tflite file run the way an app runs it, one clip at a time (LiteRT, no TensorFlow).

    TFLiteClassifier(path, threads=2) reads preprocessing.json and labels.txt beside the file.
    predict({'frames': uint8 [T, S, S, 3], 'frame_lengths': int, 'waveform': float32 [N], 'num_samples': int})
        -> probabilities float32 [K]
    Inputs the file does not take are ignored; a missing length means a full-length clip.
    predict_file(media path) -> probabilities float32 [K]: decoded by preprocessing.json's recipe (file_inputs),
        averaged over the views of a multi_clip export.
    head_*.tflite files take the cached features instead (frame_features [T, D], mfcc [F, C], lengths).
    """

    def __init__(self, path: str | Path, threads: int = 2):
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
        self.head = self.path.name.startswith("head")
        mediapipe = self.path.name.startswith("model_mediapipe")  # the waveform alone, every window full
        graph = self.preprocessing["head"] if self.head else self.preprocessing["mediapipe"] if mediapipe else self.preprocessing
        self.inputs = {spec["name"]: spec for spec in graph["inputs"]}
        try:
            self.interpreter = load_interpreter(self.path, threads)
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

    def predict_file(self, path: str | Path) -> np.ndarray:
        """A video clip or sound file -> probabilities float32 [K] (labels in self.labels). Raises MediaError."""
        if self.head:
            raise UserError(f"{self.path.name}: takes cached features, not media files; use a model_*.tflite file")
        return np.mean([self.predict(view) for view in file_inputs(path, self.preprocessing)], axis=0)
