"""A trained causal audio model run one hop at a time, its memory passed in and out as named tensors.

    samples        float32 [1, H]        the newest hop of audio (H = model.audio_stack x preprocess.hop_length)
    audio_context  float32 [1, n_fft - hop_length]   the samples before it (zeros at the start)
    audio_<cell><i>_h (and _c for LSTM)  float32 [1, units]   each RNN layer's state (zeros at the start)
        --concat--> [1, n_fft - hop_length + H] --frames ending at each hop--> [1, k, n_fft]   (k = audio_stack)
        --MFCC (causal framing: a frame depends on its own samples only)--> [1, k, C]
        --dataset normalisation (fixed statistics: no per-utterance state)--> [1, k, C]
        --stack the k frames (the model's StackSteps)--> [1, k C]
        --one step of each RNN cell, the trained weights--> [1, units]
        --pooling: `last` the state now; `mean` the mean of the last W states (a ring of them is a state:
          audio_mean_window [1, W, units] and audio_mean_count [1, 1]; W = the training window's steps)--> [1, units]
        --the classifier--> probabilities [1, K] for "now", plus every state's new value under its name

Fed an utterance hop by hop from zero states, the probabilities after the last hop are the whole-
utterance model's (causal MFCC framing, unidirectional RNN, `last` or `mean` pooling: nothing looks ahead).
States are plain tensors, at most 3-D, so a TFLite file of `step` holds no variables: an app keeps
them between calls, as MoViNet-Stream and kws_streaming models have it.

`pipeline.config.streaming_blockers(cfg)` says why a config cannot stream (empty when it can): the
derived `model.streamable` of `actrec config show`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.runtime.tflite import OUTPUT as PROBABILITIES  # noqa: F401  (re-exported: the step's names in one place)
from pipeline.runtime.tflite import SAMPLES, STREAM_SIGNATURE  # noqa: F401

CONTEXT = "audio_context"  # the samples before the newest hop
MEAN_WINDOW, MEAN_COUNT = "audio_mean_window", "audio_mean_count"  # `mean` pooling: the last W states, and how many are real


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the step signature: zeros at the start, the step's output of the same name fed back."""

    name: str
    shape: tuple[int, ...]  # with the batch axis (1)
    doc: str
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)


def hop_samples(cfg) -> int:
    """H: samples per step, one RNN step (model.audio_stack MFCC frames of preprocess.hop_length samples)."""
    return cfg.model.audio_stack * cfg.preprocess.hop_length


def stream_states(cfg) -> list[StateSpec]:
    """Every state tensor of a streamable config's step, in signature order (no model needed)."""
    p, m = cfg.preprocess, cfg.model
    context = p.n_fft - p.hop_length
    specs = [StateSpec(CONTEXT, (1, context), f"the last {context} samples before this hop (n_fft - hop_length)")]
    for i in range(m.num_layers):
        name = f"audio_{m.cell}{i}"
        specs.append(StateSpec(f"{name}_h", (1, m.units), f"RNN layer {i}: hidden state"))
        if m.cell == "lstm":
            specs.append(StateSpec(f"{name}_c", (1, m.units), f"RNN layer {i}: cell state"))
    if m.pooling == "mean":
        steps = window_steps(cfg)
        specs.append(StateSpec(MEAN_WINDOW, (1, steps, m.units), f"the last RNN outputs, oldest first ({steps}: the training window's steps)"))
        specs.append(StateSpec(MEAN_COUNT, (1, 1), f"how many of them are real (counts up to {steps})"))
    return specs


def window_steps(cfg) -> int:
    """W: RNN steps in the training window (audio_seconds of hops)."""
    return round(cfg.preprocess.audio_seconds * cfg.preprocess.sample_rate) // hop_samples(cfg)


class AudioStepper:
    """The step function of a trained audio_rnn (see the module docstring), built from its layers.

    AudioStepper(model, cfg): model is the trained keras.Model (weights shared, not copied), cfg its Config.
    hop_samples: H; states(): [StateSpec]; step({'samples': [1, H], state name: value}) -> {'probabilities': [1, K], state name: new value}
    """

    def __init__(self, model, cfg):
        from pipeline.derived import streaming_blockers
        from pipeline.features.mfcc import MFCCParams
        from pipeline.features.mfcc_layers import MFCC

        blockers = streaming_blockers(cfg)
        if blockers:
            raise ValueError(f"this model cannot stream: {'; '.join(blockers)}")
        m, p = cfg.model, cfg.preprocess
        self.params = MFCCParams.from_config(p)
        self.hop_samples = hop_samples(cfg)
        self.context_samples = self.params.n_fft - self.params.hop_length
        self.model = model
        self.mfcc = MFCC.from_params(self.params, name="mfcc")
        self.normalization = model.get_layer("mfcc_norm")
        self.cells = [model.get_layer(f"audio_{m.cell}{i}").cell for i in range(m.num_layers)]
        self.cell_type = m.cell
        self.cfg = cfg
        self.classifier = model.get_layer("head_probs")
        self.pooling = m.pooling

    def states(self) -> list[StateSpec]:
        return stream_states(self.cfg)

    def step(self, inputs: dict) -> dict:
        """One hop: {'samples' [1, H], every state} -> {'probabilities' [1, K], every new state}. TensorFlow ops."""
        import tensorflow as tf

        from pipeline.features.mfcc_layers import frame_signal

        # under the "mfcc" scope: an int8 export keeps these ops float (tflite_edit.kept_float), 8-bit samples would not do
        with tf.name_scope("mfcc"):
            signal = tf.concat([inputs[CONTEXT], inputs[SAMPLES]], axis=1)  # [1, n_fft - hop + H]
            frames = frame_signal(signal, self.params.n_fft, self.params.hop_length)  # [1, k, n_fft]
            mfcc = self.mfcc.frames_to_mfcc(frames)  # [1, k, C]
            out = {CONTEXT: tf.identity(signal[:, -self.context_samples:])}
        features = self.normalization(mfcc)  # [1, k, C]
        x = tf.reshape(features, [1, -1])  # [1, k C]: StackSteps' order (frame-major)
        for i, cell in enumerate(self.cells):
            name = f"audio_{self.cell_type}{i}"
            if self.cell_type == "lstm":
                x, (h, c) = cell(x, [inputs[f"{name}_h"], inputs[f"{name}_c"]], training=False)
                out[f"{name}_h"], out[f"{name}_c"] = h, c
            else:
                x, new = cell(x, inputs[f"{name}_h"], training=False)
                out[f"{name}_h"] = new[0] if isinstance(new, (list, tuple)) else new
        if self.pooling == "mean":  # MaskedMean over the window: the ring of the last W outputs
            window = tf.concat([inputs[MEAN_WINDOW][:, 1:], x[:, None]], axis=1)  # [1, W, units]
            count = tf.minimum(inputs[MEAN_COUNT] + 1.0, float(window.shape[1]))  # [1, 1]
            out[MEAN_WINDOW], out[MEAN_COUNT] = window, count
            x = tf.reduce_sum(window, axis=1) / count
        out[PROBABILITIES] = self.classifier(x)
        return out
