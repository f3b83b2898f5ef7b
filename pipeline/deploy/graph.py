"""The deployable graph: a trained run rebuilt to take what a phone has, with every transform after decoding.

    frames        uint8   [1, T, S, S, 3]  --frame encoder (the run's CNN)----> [1, T, D] --┐
    frame_lengths int32   [1]              --mask of valid frames----------------------------┤
    waveform      float32 [1, N]           --MFCC layer--> [1, F, C] --normalise--------------┼--> RNN head --> probabilities [1, K]
    num_samples   int32   [1]              --valid MFCC frames (1 + n // hop)----------------┘

(video-only runs have no waveform inputs, audio-only runs no frame inputs). The lengths are inputs
because the trained model masks the padding of short clips: an app passes T and N for full
clips, fewer when a clip had fewer frames or less sound, and gets exactly the Keras result.
Frames are already sampled and resized the way `decode_clip` does it; `preprocessing_spec`
writes that app-side recipe to preprocessing.json.

The graph is rebuilt from the run's config (batch 1, dropout off) with the weights of
RUN/model.keras copied by layer name; the training model itself is never converted (its
dynamic batch does not convert for LSTM/GRU, see ../shared/DESIGN.md). Feature-level runs also
give `head`: the RNN head alone on the cached features (frame_features [1, T, D], mfcc [1, F, C]
and their lengths), for apps with their own encoder.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.derived import streaming_blockers
from pipeline.errors import UserError
from pipeline.rundir import RunDir
from pipeline.runtime.tflite import OUTPUT, SIGNATURE

TFLITE_FILES = {  # format -> file name in RUN/export
    "float": "model_float.tflite",
    "float16": "model_float16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
    "head_float": "head_float.tflite",
    "stream_float": "model_stream_float.tflite",  # streamable runs: one hop per call, states in and out (signature `step`)
    "stream_int8": "model_stream_int8.tflite",
    "mediapipe": "model_mediapipe.tflite",  # speech runs: one waveform window in, one subgraph (MediaPipe Tasks' AudioClassifier)
}
STREAM_FORMATS = {"float": "stream_float", "int8": "stream_int8"}  # the streaming file each format brings along


@dataclass(frozen=True)
class InputSpec:
    """One input of an exported graph, without the batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    doc: str
    default: int | None = None  # lengths: the full length, what a complete clip passes

    def to_json(self, batch: int | None = 1) -> dict:
        out = {"name": self.name, "shape": [batch, *self.shape], "dtype": self.dtype, "doc": self.doc}
        return out if self.default is None else {**out, "default": self.default}


class InferenceGraphs:
    """The run's inference graphs, rebuilt from its config with the trained weights.

    deployable(batch_size) -> keras.Model: the raw inputs of `inputs()` -> probabilities [B, K]
    head(batch_size)       -> keras.Model: the cached-feature inputs of `head_inputs()` (frame_features, mfcc, lengths) -> [B, K]
    RunDir.require_model's one-line error when the run has no finished model (allow_unfinished: use it anyway).
    """

    def __init__(self, run_dir: str | Path, allow_unfinished: bool = False):
        from pipeline.runtime.keras_model import load_trained_model, model_spec

        self.run = RunDir(run_dir)
        self.run_dir = Path(run_dir)
        self.run.require_model(allow_unfinished)
        self.cfg: Config = self.run.config()
        self.index = self.run.read_index()
        self.spec = model_spec(self.cfg, self.index)
        self.trained = load_trained_model(self.run.model)
        self.end_to_end = self.cfg.model.name == "hybrid"  # frames and waveform are already its inputs
        self.head_input_names = [t.name.split(":")[0] for t in self.trained.inputs]
        self.streamable = not streaming_blockers(self.cfg)
        self.audio_only = {s.name for s in self.inputs()} == {"waveform", "num_samples"}

    def inputs(self) -> list[InputSpec]:
        """The deployable graph's inputs, in the order an app fills them."""
        p = self.cfg.preprocess
        specs = []
        if {"frame_features", "frames"} & set(self.head_input_names):
            specs += [
                InputSpec("frames", (p.num_frames, p.image_size, p.image_size, 3), "uint8",
                          "T RGB frames sampled from the clip, resized (short side S) and centre-cropped to S x S; zeros after the last valid frame"),
                InputSpec("frame_lengths", (), "int32", "valid frames in `frames` (T for a clip with at least T frames)", p.num_frames),
            ]
        if {"mfcc", "waveform"} & set(self.head_input_names):
            absent = "; 0 for a video without sound: the model then classifies from the frames alone" if specs else ""
            specs += [
                InputSpec("waveform", (self.num_samples,), "float32",
                          "mono audio at sample_rate in [-1, 1]: the centre num_samples of a longer clip, or the clip followed by zeros"),
                InputSpec("num_samples", (), "int32", f"valid (non-padding) samples in `waveform`{absent}", self.num_samples),
            ]
        return specs

    def head_inputs(self) -> list[InputSpec]:
        """The head's cached-feature inputs (feature-level runs), as index.json describes them."""
        features = self.index["features"]
        docs = {"frame_features": "frame encoder output per frame", "frame_lengths": "valid frames",
                "mfcc": "MFCCs (librosa recipe, un-normalised)", "mfcc_length": "valid MFCC frames"}
        lengths = {"frame_lengths": "frame_features", "mfcc_length": "mfcc"}
        specs = []
        for name in self.head_input_names:
            shape = tuple(features[name]["shape"])
            if name in ("frame_features", "frame_lengths"):
                shape = shape[1:]  # one view
            if name in lengths:
                full = features[lengths[name]]["shape"][-2]  # T or F
                specs.append(InputSpec(name, shape, "int32", docs[name], full))
            else:
                specs.append(InputSpec(name, shape, "float32", docs[name]))
        return specs

    @property
    def num_samples(self) -> int:
        p = self.cfg.preprocess
        return round(p.audio_seconds * p.sample_rate)

    def rebuilt(self):
        """The trained architecture rebuilt for inference (dropout off), trained weights copied.

        Dropout is an identity at inference, but its seed-generator state would end up in the
        TFLite file as variable ops (VAR_HANDLE, CALL_ONCE).
        """
        from pipeline.models import build_model

        model_cfg = dataclasses.replace(self.cfg.model, dropout=0.0, recurrent_dropout=0.0)
        model = build_model(self.spec, model_cfg)
        copy_weights(self.trained, model)
        return model

    def head(self, batch_size: int | None = 1):
        return with_batch(self.rebuilt(), self.head_inputs(), batch_size, name="head")

    def frame_encoder(self):
        """The run's frame encoder in-graph: frames uint8 [B, T, S, S, 3] -> frame features float32 [B, T, D]."""
        from pipeline.features.encoders import FrameDifference, MotionFeatures, build_encoder

        p = self.cfg.preprocess
        if p.encoder == "motion":
            return MotionFeatures(name="motion")
        weights = self.run.encoder_weights
        if not weights.is_file():
            raise UserError(f"{weights}: the run's frame encoder weights are missing (preprocessing writes them); re-run `actrec preprocess`")
        encoder = build_encoder(p.encoder, p.image_size, str(weights), seed=self.cfg.seed)
        difference = FrameDifference(name="frame_difference") if p.frame_difference else None
        return lambda frames: _encode_frames(encoder, difference(frames) if difference else frames)

    def deployable(self, batch_size: int | None = 1):
        """Raw frames and waveform in, probabilities out; the whole pipeline after decoding."""
        import keras

        from pipeline.features.mfcc import MFCCParams
        from pipeline.features.mfcc_layers import MFCC
        from pipeline.models.audio import SamplesToFrames

        model = self.rebuilt()
        if self.end_to_end:
            return with_batch(model, self.inputs(), batch_size, name="deployable")
        p = self.cfg.preprocess
        inputs = {s.name: keras.Input(s.shape, batch_size=batch_size, dtype=s.dtype, name=s.name) for s in self.inputs()}
        features = {}
        if "frames" in inputs:
            features["frame_features"] = self.frame_encoder()(inputs["frames"])
            features["frame_lengths"] = inputs["frame_lengths"]
        if "waveform" in inputs:
            params = MFCCParams.from_config(p)
            features["mfcc"] = MFCC.from_params(params, name="mfcc")(inputs["waveform"])
            features["mfcc_length"] = SamplesToFrames.from_params(params, self.num_samples, name="mfcc_length")(inputs["num_samples"])
        return keras.Model(inputs, call_by_name(model, features), name="deployable")


    def mediapipe(self):
        """The deployable speech graph with its RNNs unrolled, for the file MediaPipe Tasks' AudioClassifier loads (one
        subgraph: no WHILE loop). Its export takes the waveform [1, N] alone, every window full (num_samples = N)."""
        import keras

        model = self.deployable(1)
        for layer in model._flatten_layers():  # Bidirectional's forward and backward layers included
            if isinstance(layer, keras.layers.RNN):
                layer.unroll = True
        return model

    def mediapipe_spec(self, classes: list[str]) -> dict:
        """preprocessing.json's "mediapipe" entry: the file, its one input and how an app uses it."""
        p = self.cfg.preprocess
        return {
            "file": TFLITE_FILES["mediapipe"],
            "inputs": [{"name": "waveform", "shape": [1, self.num_samples], "dtype": "float32",
                        "doc": f"{self.num_samples} samples of mono audio at {p.sample_rate} Hz in [-1, 1], every one real"}],
            "outputs": [{"name": OUTPUT, "shape": [1, len(classes)], "dtype": "float32", "doc": "class probabilities, in labels.txt order"}],
            "how": ("MediaPipe Tasks' AudioClassifier (Android, iOS, web, Python) loads it as is: its metadata gives the sample rate "
                    "and the labels; the classifier cuts the audio into windows of the model's length"),
        }

    @functools.cached_property
    def stream_frame_rate(self) -> float | None:
        """Frames per second a video or audio-visual stream is sampled at: export.stream_fps, or the training frames' rate."""
        from pipeline.models.streaming import stream_modality

        return (self.cfg.export.stream_fps or training_frame_rate(self.cfg)) if stream_modality(self.cfg) != "audio" else None

    def stepper(self):
        """The streaming step of a streamable run (pipeline.models.streaming) on the rebuilt model."""
        from pipeline.models.streaming import make_stepper, stream_modality

        encoder = self.frame_encoder() if stream_modality(self.cfg) != "audio" else None
        return make_stepper(self.rebuilt(), self.cfg, encoder, self.stream_frame_rate)

    def stream_spec(self, classes: list[str]) -> dict:
        """preprocessing.json's "stream" entry: the step signature's inputs and outputs, and how an app calls it."""
        from pipeline.models.streaming import (
            PROBABILITIES,
            STREAM_SIGNATURE,
            av_hops_per_step,
            hop_samples,
            stream_inputs,
            stream_modality,
            stream_states,
            window_steps,
        )

        cfg, p = self.cfg, self.cfg.preprocess
        modality, rate = stream_modality(cfg), self.stream_frame_rate
        k = av_hops_per_step(cfg, rate) if modality == "av" else None
        newest, states = stream_inputs(cfg, k), [s.to_json() for s in stream_states(cfg)]
        step = "hop" if modality == "audio" else "frame"
        sound = {"hop_samples": hop_samples(cfg), "sample_rate": p.sample_rate}
        if modality == "audio":  # a step per hop
            timing = {**sound, "hop_seconds": hop_samples(cfg) / p.sample_rate}
        else:  # a step per frame, with (audio-visual) up to k hops of its sound
            timing = {"frame_size": p.image_size, "frame_rate": rate, "hop_seconds": 1 / rate,
                      **({**sound, "hops_per_step": k} if modality == "av" else {})}
        what = {"audio": "samples", "video": "frame",
                "av": ("frame (frame_valid 1) and the audio hops of hop_samples since the frame before (up to hops_per_step, "
                       "oldest first in `samples`, their count in audio_hops: 0 for a video without sound)")}[modality]
        whole = {"audio": "window", "video": "clip", "av": "clip"}[modality]
        return {
            "files": {fmt: TFLITE_FILES[target] for fmt, target in STREAM_FORMATS.items()},
            "signature": STREAM_SIGNATURE,
            "modality": modality,
            "input": newest[0].name,
            "step_inputs": [s.name for s in newest],
            **timing,
            "window_hops": window_steps(cfg),
            "inputs": [*(s.to_json() for s in newest), *states],
            "outputs": [{"name": PROBABILITIES, "shape": [1, len(classes)], "dtype": "float32", "doc": "class probabilities now, in labels.txt order"}, *states],
            "how": (f"call `step` once per {step} with the newest {what} and every state; feed each state "
                    f"output back under its name at the next call; start (and restart) with all states zero. After window_hops "
                    f"{step}s from zero states the probabilities equal the whole-{whole} model's on those "
                    f"{'samples' if modality == 'audio' else 'frames'}. The model was trained on windows of window_hops {step}s: on a long stream "
                    "keep two copies of the states, restart each from zeros every window_hops steps, half a window apart, and read "
                    "the probabilities of the copy that has heard more than half a window (what `actrec stream` does; measured in "
                    "docs/streaming.md)." + (f" Frames: sample the camera or file at frame_rate ({rate:g}) frames per second, the "
                                              f"rate of the model's training frames ({p.num_frames} spread over each training clip)."
                                              if rate else "")),
        }


def training_frame_rate(cfg: Config, clips: int = 32, fallback: float = 10.0) -> float:
    """Frames per second the whole-clip model was trained on: num_frames spread over each training clip (all of a
    shorter clip's frames), the median over up to `clips` training clips; `fallback` when none can be probed."""
    import numpy as np

    from pipeline.datasets import resolve_rows
    from pipeline.media import MediaError
    from pipeline.media.probe import probe_media

    root = Path(cfg.data.root)
    try:
        rows = [r for r in resolve_rows(cfg)[0] if r.split == "train"][:clips] if root.is_dir() else []
    except UserError:
        rows = []
    rates = []
    for row in rows:
        try:
            info = probe_media(root / row.path)
        except (MediaError, OSError):
            continue
        if info.duration > 0 and info.fps > 0:
            rates.append(min(cfg.preprocess.num_frames, info.fps * info.duration) / info.duration)
    return round(float(np.median(rates)), 3) if rates else fallback


def _encode_frames(encoder, frames):
    """encoder ([N, S, S, 3] -> [N, D]) on every frame of frames [B, T, S, S, 3] -> [B, T, D], as one batch of B*T images.

    keras.layers.TimeDistributed unrolls a known T into T copies of the encoder: T times the conv ops,
    and in the int8 file T times their bias tensors and quantization parameters, each copy calibrated
    on its own frame position (measured on the 16-frame action model: 64 CONV_2D ops instead of 4,
    float file 16 KB and int8 file 26 KB smaller).
    """
    import keras

    num_frames, image_shape = frames.shape[1], tuple(frames.shape[2:])
    features = encoder(keras.ops.reshape(frames, (-1, *image_shape)))
    return keras.ops.reshape(features, (-1, num_frames, features.shape[-1]))


def copy_weights(source, target) -> None:
    """Copy weights layer by layer, matched by name (the rebuilt graph names its layers as training did)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def with_batch(model, specs: Sequence[InputSpec], batch_size: int | None, name: str):
    """`model` called on inputs with a fixed batch size (1 for TFLite: LSTM/GRU loops need a static batch)."""
    import keras

    inputs = {s.name: keras.Input(s.shape, batch_size=batch_size, dtype=s.dtype, name=s.name) for s in specs}
    return keras.Model(inputs, call_by_name(model, inputs), name=name)


def call_by_name(model, tensors: dict):
    """model(...) with its inputs picked from `tensors` by name, in the model's own input order.

    (Keras matches a dict to a functional model's inputs only in some cases; a list always works.)
    """
    return model([tensors[t.name.split(":")[0]] for t in model.inputs])


# ----------------------------------------------------------------------------- what an app needs besides the model


def preprocessing_spec(graphs: InferenceGraphs, classes: list[str]) -> dict:
    """preprocessing.json: the inputs and outputs, and what an app does before calling the model."""
    p = graphs.cfg.preprocess
    spec = {
        "model": graphs.cfg.model.name,
        "labels_file": "labels.txt",
        "num_classes": len(classes),
        "signature": SIGNATURE,
        "inputs": [s.to_json() for s in graphs.inputs()],
        "outputs": [{"name": OUTPUT, "shape": [1, len(classes)], "dtype": "float32", "doc": "class probabilities, in labels.txt order"}],
    }
    names = {s.name for s in graphs.inputs()}
    if "frames" in names:
        spec["video"] = {
            "num_frames": p.num_frames,
            "frame_size": p.image_size,
            "sampling": "uniform" if p.sampling == "segments" else p.sampling,
            "num_clips": p.num_clips if p.sampling == "multi_clip" else 1,
            "how": (f"decode the clip, keep T={p.num_frames} frames spread evenly over it (the centres of T equal segments; "
                    f"multi_clip: K half-overlapping windows, one model call each, probabilities averaged), "
                    f"convert to RGB, resize so the shorter side is {p.image_size} (area filter when shrinking, bilinear "
                    f"when enlarging) and centre-crop {p.image_size}x{p.image_size}; a clip with fewer than T frames gives "
                    f"all of them followed by zero frames, with frame_lengths = the number of real frames"),
            "pixel_values": "uint8 0..255; the model normalises them itself",
        }
    if "waveform" in names:
        spec["audio"] = {
            "sample_rate": p.sample_rate,
            "clip_seconds": p.audio_seconds,
            "num_samples": graphs.num_samples,
            "how": (f"mono (channels averaged), resampled to {p.sample_rate} Hz, values in [-1, 1]; a longer recording is "
                    f"centre-cropped to {graphs.num_samples} samples, a shorter one zero-padded at the end with "
                    f"num_samples = the number of real samples; the model computes its MFCCs itself"),
        }
        if "frames" in names:
            spec["audio"]["no_audio_track"] = ("a video without a sound track (or whose track has no samples): pass zeros with "
                                               "num_samples = 0; the model leaves the sound out and classifies from the frames")
    if graphs.streamable:
        spec["stream"] = graphs.stream_spec(classes)
    if graphs.audio_only:
        spec["mediapipe"] = graphs.mediapipe_spec(classes)
    if not graphs.end_to_end:
        spec["head"] = {
            "file": TFLITE_FILES["head_float"],
            "inputs": [s.to_json() for s in graphs.head_inputs()],
            "doc": "the RNN head alone, for apps that run their own frame encoder and MFCC (pipeline.preprocess recipe)",
        }
    return spec
