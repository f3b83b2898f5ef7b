"""Model builders: video-only, audio-only, audio-visual fusion, and the registry that names them.

Inputs are named as the cached features are (see preprocess.feature_schema):
    frame_features float32 [B, T, D] + frame_lengths int [B]    (video)
    mfcc           float32 [B, F, C] + mfcc_length   int [B]    (audio)
Output: class probabilities float32 [B, num_classes].

    late fusion: each modality has its own classifier; their probabilities are averaged.
    mid fusion:  the pooled states are concatenated and one classifier decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras
from keras import layers

from pipeline.errors import UserError
from pipeline.models.heads import SequenceMask, StackSteps, rnn_head


@dataclass(frozen=True)
class ModelSpec:
    """What a builder needs besides the config: input shapes and the class count (no file I/O in models/)."""

    num_classes: int
    frame_features: tuple[int, int] | None = None  # (T, D)
    frames: tuple[int, int, int] | None = None  # (T, S, S) uint8 frames, for the hybrid model
    mfcc: tuple[int, int] | None = None  # (F, C)
    waveform: int | None = None  # N samples, for the hybrid model
    mfcc_stats: dict | None = None  # {'mean': [C], 'std': [C]} for dataset normalisation
    preprocess: object = None  # PreprocessConfig (MFCC parameters, encoder) for the hybrid model
    seed: int = 0
    extra: dict = field(default_factory=dict)


def classifier(x, cfg, num_classes: int, name: str):
    """Dropout + softmax Dense (float32 output even under mixed precision)."""
    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = layers.Dropout(cfg.dropout, name=f"{name}_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32", name=f"{name}_probs")(x)


def video_branch(spec: ModelSpec, cfg):
    """Inputs and pooled state of the frame-feature branch: [B, T, D] -> [B, H]."""
    t, d = spec.frame_features
    features = keras.Input((t, d), name="frame_features")
    lengths = keras.Input((), dtype="int32", name="frame_lengths")
    # Per-frame LayerNorm: frozen-CNN features have arbitrary scales; the RNN wants unit-scale inputs.
    x = layers.LayerNormalization(name="video_norm")(features)
    return [features, lengths], rnn_head(x, lengths, cfg, "video")


def audio_branch(spec: ModelSpec, cfg):
    """Inputs and pooled state of the MFCC branch: [B, F, C] -> [B, H].

    A spec with a waveform and no cached MFCCs (train.source: raw_audio) gets the waveform branch
    instead: the MFCCs are computed in-model (hybrid.waveform_branch).
    """
    if spec.mfcc is None and spec.waveform is not None:
        from pipeline.models.hybrid import waveform_branch

        return waveform_branch(spec, cfg)
    f, c = spec.mfcc
    mfcc = keras.Input((f, c), name="mfcc")
    lengths = keras.Input((), dtype="int32", name="mfcc_length")
    return [mfcc, lengths], audio_head(mfcc, lengths, spec, cfg)


def audio_head(mfcc, lengths, spec: ModelSpec, cfg):
    """MFCCs [B, F, C] (lengths [B]) -> normalised, stacked model.audio_stack frames per step -> rnn_head -> [B, H]."""
    # Per-utterance statistics over the valid frames only: padding must not shift the mean.
    x = mfcc_normalization(spec)(mfcc, mask=SequenceMask(name="mfcc_norm_mask")(mfcc, lengths))
    if cfg.audio_stack > 1:
        x, lengths = StackSteps(cfg.audio_stack, name="audio_stack")(x, lengths)
    return rnn_head(x, lengths, cfg, "audio")


def mfcc_normalization(spec: ModelSpec):
    from pipeline.features.mfcc import MFCCNormalization

    mode = spec.preprocess.normalize if spec.preprocess is not None else "utterance"
    stats = spec.mfcc_stats or {}
    return MFCCNormalization(mode=mode, mean=stats.get("mean"), std=stats.get("std"), name="mfcc_norm")


def fuse(pooled: list, cfg, num_classes: int):
    """One pooled state per modality -> class probabilities [B, num_classes]."""
    if len(pooled) == 1:
        return classifier(pooled[0], cfg, num_classes, "head")
    if cfg.fusion == "late":
        probs = [classifier(p, cfg, num_classes, name) for p, name in zip(pooled, ("video", "audio"))]
        return layers.Average(name="late_fusion")(probs)
    return classifier(layers.Concatenate(name="mid_fusion")(pooled), cfg, num_classes, "fusion")


def video_rnn(spec: ModelSpec, cfg) -> keras.Model:
    _need(spec, "frame_features", "video_rnn")
    inputs, pooled = video_branch(spec, cfg)
    return keras.Model(inputs, fuse([pooled], cfg, spec.num_classes), name="video_rnn")


def audio_rnn(spec: ModelSpec, cfg) -> keras.Model:
    if spec.waveform is None:
        _need(spec, "mfcc", "audio_rnn")
    inputs, pooled = audio_branch(spec, cfg)
    return keras.Model(inputs, fuse([pooled], cfg, spec.num_classes), name="audio_rnn")


def av_fusion(spec: ModelSpec, cfg) -> keras.Model:
    _need(spec, "frame_features", "av_fusion")
    _need(spec, "mfcc", "av_fusion")
    video_inputs, video_pooled = video_branch(spec, cfg)
    audio_inputs, audio_pooled = audio_branch(spec, cfg)
    probs = fuse([video_pooled, audio_pooled], cfg, spec.num_classes)
    return keras.Model(video_inputs + audio_inputs, probs, name=f"av_fusion_{cfg.fusion}")


def _need(spec: ModelSpec, feature: str, model: str) -> None:
    if getattr(spec, feature) is None:
        hint = {
            "frame_features": "preprocess.modalities must include video with an encoder other than none",
            "mfcc": "preprocess.modalities must include audio",
            "frames": "preprocess.encoder must be none (cache raw frames)",
        }[feature]
        raise UserError(f"model.name={model} needs cached '{feature}' features, which the run dir does not have: {hint}, then run `actrec preprocess`")


def _hybrid(spec: ModelSpec, cfg) -> keras.Model:
    from pipeline.models.hybrid import hybrid_cnn_rnn

    return hybrid_cnn_rnn(spec, cfg)


MODEL_REGISTRY: dict[str, Callable[..., keras.Model]] = {
    "video_rnn": video_rnn,
    "audio_rnn": audio_rnn,
    "av_fusion": av_fusion,
    "hybrid": _hybrid,
}


def build_model(spec: ModelSpec, cfg) -> keras.Model:
    """The model named by cfg.name (ModelConfig); unknown names are one-line errors."""
    if cfg.name not in MODEL_REGISTRY:
        raise UserError(f"model.name: unknown model {cfg.name!r}; known: {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[cfg.name](spec, cfg)
