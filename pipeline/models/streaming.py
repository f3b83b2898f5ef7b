"""A trained causal model run one step at a time, its memory passed in and out as named tensors.

Audio (audio_rnn), one step per hop of H samples:

    samples        float32 [1, H]        the newest hop of audio (H = model.audio_stack x preprocess.hop_length)
    audio_context  float32 [1, n_fft - hop_length]   the samples before it (zeros at the start)
        --concat--> [1, n_fft - hop_length + H] --frames ending at each hop--> [1, k, n_fft]   (k = audio_stack)
        --MFCC (causal framing: a frame depends on its own samples only)--> [1, k, C]
        --dataset normalisation (fixed statistics: no per-utterance state)--> [1, k, C]
        --stack the k frames (the model's StackSteps)--> [1, k C]                                      = this step's input

Video (video_rnn on a per-frame encoder), one step per frame:

    frame                 uint8   [1, S, S, 3]   the newest frame, sampled and cropped as for the whole-clip model
    video_previous_frame  float32 [1, S, S, 3]   the frame before it (motion and frame differences only)
    video_frames_seen     float32 [1, 1]         1 once a frame was seen (0 at the start: the first frame has no predecessor)
        --the run's frame encoder on [previous, newest] (the newest twice at the start: no motion, as frame 0 of a
          clip has), its second row; a CNN on plain frames reads the newest only--> [1, D]
        --the model's video_norm (fixed statistics, or per frame)--> [1, D]                           = this step's input

Both then:
    <modality>_<cell><i>_h (and _c for LSTM)  float32 [1, units]   each RNN layer's state (zeros at the start)
        --one step of each RNN cell, the trained weights--> [1, units]
        --pooling: `last` the state now; `mean` the mean of the last W states (a ring of them is a state:
          <modality>_mean_window [1, W, units] and <modality>_mean_count [1, 1]; W = the training window's steps)--> [1, units]
        --the classifier--> probabilities [1, K] for "now", plus every state's new value under its name

Fed an utterance (clip) step by step from zero states, the probabilities after the last step are the whole-window
model's: nothing looks ahead (causal MFCC framing or per-frame encoding, unidirectional RNN, `last` or `mean` pooling).
States are plain tensors, at most 4-D, so a TFLite file of `step` holds no variables: an app keeps them between
calls, as MoViNet-Stream and kws_streaming models have it.

`pipeline.derived.streaming_blockers(cfg)` says why a config cannot stream (empty when it can): the
derived `model.streamable` of `actrec config show`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.runtime.tflite import FRAME, SAMPLES, STREAM_SIGNATURE  # noqa: F401  (re-exported: the step's names in one place)
from pipeline.runtime.tflite import OUTPUT as PROBABILITIES

CONTEXT = "audio_context"  # the samples before the newest hop
PREVIOUS_FRAME, FRAMES_SEEN = "video_previous_frame", "video_frames_seen"


@dataclass(frozen=True)
class StateSpec:
    """One tensor of the step signature: a state (zeros at the start, the step's output of the same name fed back),
    or the step's newest input."""

    name: str
    shape: tuple[int, ...]  # with the batch axis (1)
    doc: str
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)


def stream_modality(cfg) -> str:
    """'audio' or 'video': what a streamable config's step reads."""
    return "video" if cfg.model.name == "video_rnn" else "audio"


def hop_samples(cfg) -> int:
    """H: samples per audio step, one RNN step (model.audio_stack MFCC frames of preprocess.hop_length samples)."""
    return cfg.model.audio_stack * cfg.preprocess.hop_length


def needs_previous_frame(cfg) -> bool:
    """Whether a frame's features depend on the frame before it (motion, frame differences)."""
    return cfg.preprocess.encoder == "motion" or cfg.preprocess.frame_difference


def step_input(cfg) -> StateSpec:
    """The step's newest input: one hop of audio, or one frame."""
    p = cfg.preprocess
    if stream_modality(cfg) == "video":
        return StateSpec(FRAME, (1, p.image_size, p.image_size, 3),
                         f"the newest RGB frame, resized (short side {p.image_size}) and centre-cropped as the whole-clip model's", "uint8")
    hop = hop_samples(cfg)
    return StateSpec(SAMPLES, (1, hop), f"the newest {hop} samples, mono at {p.sample_rate} Hz in [-1, 1]")


def window_steps(cfg) -> int:
    """W: steps in the training window (audio_seconds of hops; num_frames frames)."""
    if stream_modality(cfg) == "video":
        return cfg.preprocess.num_frames
    return round(cfg.preprocess.audio_seconds * cfg.preprocess.sample_rate) // hop_samples(cfg)


def stream_states(cfg) -> list[StateSpec]:
    """Every state tensor of a streamable config's step, in signature order (no model needed)."""
    p, m = cfg.preprocess, cfg.model
    modality = stream_modality(cfg)
    specs = []
    if modality == "audio":
        context = p.n_fft - p.hop_length
        specs.append(StateSpec(CONTEXT, (1, context), f"the last {context} samples before this hop (n_fft - hop_length)"))
    elif needs_previous_frame(cfg):
        specs.append(StateSpec(PREVIOUS_FRAME, (1, p.image_size, p.image_size, 3), "the frame before this one (RGB values 0..255)"))
        specs.append(StateSpec(FRAMES_SEEN, (1, 1), "1 once a frame has been seen, 0 at the start"))
    for i in range(m.num_layers):
        name = f"{modality}_{m.cell}{i}"
        specs.append(StateSpec(f"{name}_h", (1, m.units), f"RNN layer {i}: hidden state"))
        if m.cell == "lstm":
            specs.append(StateSpec(f"{name}_c", (1, m.units), f"RNN layer {i}: cell state"))
    if m.pooling == "mean":
        steps = window_steps(cfg)
        specs.append(StateSpec(f"{modality}_mean_window", (1, steps, m.units), f"the last RNN outputs, oldest first ({steps}: the training window's steps)"))
        specs.append(StateSpec(f"{modality}_mean_count", (1, 1), f"how many of them are real (counts up to {steps})"))
    return specs


class Stepper:
    """The step function of a trained streamable model (see the module docstring), built from its layers.

    make_stepper(model, cfg[, encode_frames]): model is the trained keras.Model (weights shared, not copied), cfg its
    Config; video runs also need the run's frame encoder (frames [1, t, S, S, 3] uint8 -> features [1, t, D]).
    input: the newest input's StateSpec; hop_samples: H (audio; None for video); states(): [StateSpec]; step({input name: value, state name: value}) ->
    {'probabilities': [1, K], state name: new value}
    """

    def __init__(self, model, cfg):
        from pipeline.derived import streaming_blockers

        blockers = streaming_blockers(cfg)
        if blockers:
            raise ValueError(f"this model cannot stream: {'; '.join(blockers)}")
        m = cfg.model
        self.cfg, self.model, self.modality = cfg, model, stream_modality(cfg)
        self.input = step_input(cfg)
        self.hop_samples = hop_samples(cfg) if self.modality == "audio" else None  # samples per step (audio)
        self.cells = [model.get_layer(f"{self.modality}_{m.cell}{i}").cell for i in range(m.num_layers)]
        self.classifier = model.get_layer("head_probs")

    def states(self) -> list[StateSpec]:
        return stream_states(self.cfg)

    def features(self, inputs: dict, out: dict):
        """This step's RNN input [1, features] from the newest input and the states; the new states go in `out`."""
        raise NotImplementedError

    def step(self, inputs: dict) -> dict:
        """One step: {newest input, every state} -> {'probabilities' [1, K], every new state}. TensorFlow ops."""
        import tensorflow as tf

        out = {}
        x = self.features(inputs, out)
        cell_type = self.cfg.model.cell
        for i, cell in enumerate(self.cells):
            name = f"{self.modality}_{cell_type}{i}"
            if cell_type == "lstm":
                x, (h, c) = cell(x, [inputs[f"{name}_h"], inputs[f"{name}_c"]], training=False)
                out[f"{name}_h"], out[f"{name}_c"] = h, c
            else:
                x, new = cell(x, inputs[f"{name}_h"], training=False)
                out[f"{name}_h"] = new[0] if isinstance(new, (list, tuple)) else new
        if self.cfg.model.pooling == "mean":  # MaskedMean over the window: the ring of the last W outputs
            ring, count = f"{self.modality}_mean_window", f"{self.modality}_mean_count"
            window = tf.concat([inputs[ring][:, 1:], x[:, None]], axis=1)  # [1, W, units]
            out[count] = tf.minimum(inputs[count] + 1.0, float(window.shape[1]))  # [1, 1]
            out[ring] = window
            x = tf.reduce_sum(window, axis=1) / out[count]
        out[PROBABILITIES] = self.classifier(x)
        return out


class AudioStepper(Stepper):
    """One hop of audio per step: causal MFCC frames of the hop, normalised and stacked."""

    def __init__(self, model, cfg):
        from pipeline.features.mfcc import MFCCParams
        from pipeline.features.mfcc_layers import MFCC

        super().__init__(model, cfg)
        self.params = MFCCParams.from_config(cfg.preprocess)
        self.context_samples = self.params.n_fft - self.params.hop_length
        self.mfcc = MFCC.from_params(self.params, name="mfcc")
        self.normalization = model.get_layer("mfcc_norm")

    def features(self, inputs: dict, out: dict):
        import tensorflow as tf

        from pipeline.features.mfcc_layers import frame_signal

        # under the "mfcc" scope: an int8 export keeps these ops float (tflite_edit.kept_float), 8-bit samples would not do
        with tf.name_scope("mfcc"):
            signal = tf.concat([inputs[CONTEXT], inputs[SAMPLES]], axis=1)  # [1, n_fft - hop + H]
            frames = frame_signal(signal, self.params.n_fft, self.params.hop_length)  # [1, k, n_fft]
            mfcc = self.mfcc.frames_to_mfcc(frames)  # [1, k, C]
            out[CONTEXT] = tf.identity(signal[:, -self.context_samples:])
        return tf.reshape(self.normalization(mfcc), [1, -1])  # [1, k C]: StackSteps' order (frame-major)


class VideoStepper(Stepper):
    """One frame per step: the run's frame encoder on it (and on the frame before, for motion), normalised."""

    def __init__(self, model, cfg, encode_frames):
        super().__init__(model, cfg)
        self.encode_frames = encode_frames
        self.normalization = model.get_layer("video_norm")
        self.with_previous = needs_previous_frame(cfg)

    def features(self, inputs: dict, out: dict):
        import tensorflow as tf

        frame = inputs[FRAME]  # [1, S, S, 3] uint8
        if self.with_previous:
            # under the "motion" scope: an int8 export keeps these ops float (tflite_edit.kept_float); a previous frame
            # off by one grey level would be motion everywhere
            with tf.name_scope("motion"):
                newest = tf.cast(frame, tf.float32)
                seen = tf.reshape(inputs[FRAMES_SEEN], [1, 1, 1, 1])
                previous = seen * inputs[PREVIOUS_FRAME] + (1.0 - seen) * newest  # the first frame: itself, so no motion
                pair = tf.cast(tf.stack([previous, newest], axis=1), tf.uint8)  # [1, 2, S, S, 3]
                out[PREVIOUS_FRAME], out[FRAMES_SEEN] = tf.identity(newest), tf.ones_like(inputs[FRAMES_SEEN])
            features = self.encode_frames(pair)[:, 1:]  # [1, 1, D]: what the whole clip's encoder gives this frame
        else:
            features = self.encode_frames(frame[:, None])  # [1, 1, D]
        return tf.reshape(self.normalization(features), [1, -1])  # [1, D]


def make_stepper(model, cfg, encode_frames=None) -> Stepper:
    """The stepper of a streamable config's modality (video runs: with the run's frame encoder)."""
    if stream_modality(cfg) == "video":
        return VideoStepper(model, cfg, encode_frames)
    return AudioStepper(model, cfg)
