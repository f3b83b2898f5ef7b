"""Training an audio-visual model to classify from each modality alone too (`train.modality_loss`).

A fused model learns to lean on its stronger modality (here audio), and its video branch learns only what the audio
leaves to it: with the sound gone it falls behind a model that only ever saw video. Modality dropout answers that by
chance (some clips lose one modality); these losses answer it on every clip. The trainer shares every layer of the
model and adds no weight:

    inputs --the model's branches--> video pooled [B, H], audio pooled [B, H] (each gated by its presence [B, 1])
        mid fusion:           the fusion classifier on [video, 0] and on [0, audio]: what `evaluate --drop audio|video` feeds it
        late, backoff fusion: each modality's own classifier
        --> fused probabilities [B, K] and, per modality, alone probabilities [B, K] with its presence [B, 1]

    loss = loss(fused) + modality_loss x sum over modalities of loss(alone), each clip weighted by its presence
           (a clip without a modality does not teach its alone output); the validation loss too, so early stopping
           and the best epoch weigh all three answers the model ships (a clip without sound, or without frames, gets
           its alone answer), not the fused one alone.

Metrics are the fused output's. The saved model is the inference model (one output): the trainer is only fit().
Wang et al. 2020 ("What makes training multi-modal classification networks hard?") train with such unimodal losses.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.models.fusion import MODALITIES


class Absent(layers.Layer):
    """pooled [B, H] -> zeros [B, H]: a modality's pooled state with its gate closed, as a clip without it has."""

    def call(self, pooled):
        return ops.zeros_like(pooled)


def alone_outputs(model: keras.Model) -> list:
    """[(alone probabilities [B, K], presence [B, 1]) per modality] of a two-modality model built by fusion.fuse."""
    present = [model.get_layer(f"{name}_present").output for name in MODALITIES]
    if any(layer.name in ("late_fusion", "backoff_fusion") for layer in model.layers):
        return [(model.get_layer(f"{name}_probs").output, p) for name, p in zip(MODALITIES, present)]
    gated = [model.get_layer(f"{name}_gate").output for name in MODALITIES]
    concatenate, dropout, classify = (model.get_layer(name) for name in ("mid_fusion", "fusion_dropout", "fusion_probs"))
    outputs = []
    for kept, p in enumerate(present):  # the fusion classifier with every other modality's gate closed
        parts = [g if j == kept else Absent(name=f"{name}_absent")(g) for j, (g, name) in enumerate(zip(gated, MODALITIES))]
        outputs.append((classify(dropout(concatenate(parts))), p))
    return outputs


class ModalityLossTrainer(keras.Model):
    """The model's layers with outputs [fused, (alone, presence) per modality]; the loss of the module docstring."""

    def __init__(self, model: keras.Model, weight: float, **kwargs):
        super().__init__(inputs=model.inputs, outputs=[model.output, *alone_outputs(model)], name=f"{model.name}_trainer", **kwargs)
        self.weight = weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        fused, *alone = y_pred
        loss = super().compute_loss(x, y, fused, sample_weight, training)
        for probs, present in alone:
            weights = ops.reshape(present, (-1,)) if sample_weight is None else ops.reshape(present, (-1,)) * sample_weight
            # the compiled loss itself: the same label smoothing, reduction and distribution scaling as the fused one
            loss = loss + self.weight * self._compile_loss(y, probs, weights)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, y_pred[0], sample_weight)


def can_train_alone(model: keras.Model) -> bool:
    """Whether the model fuses two modalities (fusion.fuse made `video_present` and `audio_present`)."""
    names = {layer.name for layer in model.layers}
    return all(f"{name}_present" in names for name in MODALITIES)
