"""Recurrent heads: a sequence of per-step features -> one pooled vector.

    steps: float32 [B, T, D], lengths: int [B] --mask--> RNN layers (uni/bidirectional, stacked)
        --pooling (last | mean | attention)--> pooled: float32 [B, H]

Padded steps (t >= length) are masked: the RNN skips them and pooling ignores them, so a
padded sequence gives the same output as the same sequence unpadded.

Initialisation is Keras' default, which is what makes RNNs train from the start: Glorot-uniform
input kernels, orthogonal recurrent kernels (eigenvalues of modulus 1: the state neither
explodes nor dies over T steps at init), zero biases and a unit forget-gate bias for LSTM.
"""

from __future__ import annotations

import keras
from keras import layers, ops

CELLS = {"lstm": layers.LSTM, "gru": layers.GRU, "simple_rnn": layers.SimpleRNN}


def inherit_trainable(layer: layers.Layer, sublayers) -> None:
    """Give the sublayers a layer made in its __init__ the layer's own `trainable` flag; call it in build().

    A layer loaded frozen (`trainable: false` in its config, e.g. a train.unimodal_first stage) gets its sublayers
    trainable: Keras passes the flag on only when it changes, not from the config. The loaded model would train them.
    """
    for sublayer in sublayers:
        sublayer.trainable = layer.trainable


class MaskConsumer(layers.Layer):
    """A layer that takes the padding mask explicitly (from the lengths) and emits none.

    Keras would otherwise carry a mask left on its input past it, or warn that it drops one; the
    RNN layers after it get a fresh mask made from the (possibly changed) lengths instead.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, *args, **kwargs):
        return None


@keras.saving.register_keras_serializable(package="actrec")
class SequenceMask(MaskConsumer):
    """lengths: int [B] -> mask: bool [B, T] (True for valid steps), T taken from `steps`."""

    def call(self, steps, lengths):
        positions = ops.arange(ops.shape(steps)[1])
        return ops.less(positions[None, :], ops.cast(ops.reshape(lengths, (-1, 1)), "int32"))


@keras.saving.register_keras_serializable(package="actrec")
class MaskedMean(MaskConsumer):
    """Mean over valid steps: states [B, T, H], mask [B, T] -> [B, H]."""

    def call(self, states, mask):
        weights = ops.cast(mask, states.dtype)[..., None]
        return ops.sum(states * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="actrec")
class MaskedMax(MaskConsumer):
    """Maximum over valid steps, per unit: states [B, T, H], mask [B, T] -> [B, H] (zeros when no step is valid).
    A short event anywhere in a long window keeps its peak, where a mean would dilute it. Padding (at the end) is
    replaced by the first step, not by a large negative constant, so an int8 file's ranges stay those of the states."""

    def call(self, states, mask):
        valid = ops.cast(mask, "bool")[..., None]
        peak = ops.max(ops.where(valid, states, states[:, :1]), axis=1)
        return ops.where(ops.any(valid, axis=1), peak, ops.zeros_like(peak))


@keras.saving.register_keras_serializable(package="actrec")
class AttentionPooling(MaskConsumer):
    """Learned weights over time: a_t = softmax_t(v . tanh(W h_t)), pooled = sum_t a_t h_t.

    states [B, T, H], mask [B, T] -> [B, H]; masked steps get zero weight.
    """

    def __init__(self, units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.project = layers.Dense(units, activation="tanh", name="project")
        self.score = layers.Dense(1, use_bias=False, name="score")

    def build(self, states_shape, mask_shape=None):
        inherit_trainable(self, [self.project, self.score])
        self.project.build(states_shape)
        self.score.build((*states_shape[:-1], self.units))

    def call(self, states, mask):
        scores = ops.squeeze(self.score(self.project(states)), -1)  # [B, T]
        scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1)
        return ops.sum(states * weights[..., None], axis=1)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="actrec")
class StackSteps(MaskConsumer):
    """Low frame rate: k consecutive steps become one, steps [B, T, C] -> [B, ceil(T / k), k * C].

    lengths [B] -> ceil(lengths / k). Stacking 3-4 MFCC frames (30-40 ms per RNN step, as in
    low-frame-rate acoustic models) keeps every coefficient but makes the RNN k times shorter:
    faster on CPUs and phones and shorter gradient paths.
    """

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        self.k = k

    def call(self, steps, lengths):
        t, c = steps.shape[1], steps.shape[2]
        padded = -(-t // self.k) * self.k
        if padded != t:
            steps = ops.pad(steps, [[0, 0], [0, padded - t], [0, 0]])
        stacked = ops.reshape(steps, (-1, padded // self.k, self.k * c))
        return stacked, ops.floor_divide(ops.cast(lengths, "int32") + self.k - 1, self.k)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


def rnn_head(steps, lengths, cfg, name: str):
    """Stacked (bi)directional RNN over `steps` with padding masked, then pooled.

    steps: float32 [B, T, D]; lengths: int [B]; cfg: ModelConfig -> float32 [B, H]
    (H = units, or 2 x units for a concatenating bidirectional layer).
    """
    mask = SequenceMask(name=f"{name}_mask")(steps, lengths)
    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = steps
    for i in range(cfg.num_layers):
        last = i == cfg.num_layers - 1
        rnn = CELLS[cfg.cell](
            cfg.units,
            return_sequences=not (last and cfg.pooling == "last"),
            dropout=cfg.dropout,
            recurrent_dropout=cfg.recurrent_dropout,
            kernel_regularizer=regularizer,
            name=f"{name}_{cfg.cell}{i}",
        )
        if cfg.bidirectional:
            rnn = layers.Bidirectional(rnn, merge_mode=cfg.merge_mode, name=f"{name}_bi{cfg.cell}{i}")
        x = rnn(x, mask=mask)
    if cfg.pooling == "mean":
        return MaskedMean(name=f"{name}_mean")(x, mask)
    if cfg.pooling == "max":
        return MaskedMax(name=f"{name}_max")(x, mask)
    if cfg.pooling == "attention":
        return AttentionPooling(cfg.units, name=f"{name}_attention")(x, mask)
    return x
