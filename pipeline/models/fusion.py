"""Model builders on cached features: video-only, audio-only and audio-visual fusion.

Inputs are named as the cached features are (see preprocess.feature_schema):
    frame_features float32 [B, T, D] + frame_lengths int [B]    (video)
    mfcc           float32 [B, F, C] + mfcc_length   int [B]    (audio)
Output: class probabilities float32 [B, num_classes].

    late fusion: each modality has its own classifier; their probabilities are averaged.
    mid fusion:  the pooled states are concatenated and one classifier decides.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models.audio import audio_branch
from pipeline.models.heads import rnn_head
from pipeline.models.spec import ModelSpec, require_feature


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


def fuse(pooled: list, cfg, num_classes: int):
    """One pooled state per modality -> class probabilities [B, num_classes]."""
    if len(pooled) == 1:
        return classifier(pooled[0], cfg, num_classes, "head")
    if cfg.fusion == "late":
        probs = [classifier(p, cfg, num_classes, name) for p, name in zip(pooled, ("video", "audio"))]
        return layers.Average(name="late_fusion")(probs)
    return classifier(layers.Concatenate(name="mid_fusion")(pooled), cfg, num_classes, "fusion")


def video_rnn(spec: ModelSpec, cfg) -> keras.Model:
    require_feature(spec, "frame_features", "video_rnn")
    inputs, pooled = video_branch(spec, cfg)
    return keras.Model(inputs, fuse([pooled], cfg, spec.num_classes), name="video_rnn")


def audio_rnn(spec: ModelSpec, cfg) -> keras.Model:
    if spec.waveform is None:
        require_feature(spec, "mfcc", "audio_rnn")
    inputs, pooled = audio_branch(spec, cfg)
    return keras.Model(inputs, fuse([pooled], cfg, spec.num_classes), name="audio_rnn")


def av_fusion(spec: ModelSpec, cfg) -> keras.Model:
    require_feature(spec, "frame_features", "av_fusion")
    require_feature(spec, "mfcc", "av_fusion")
    video_inputs, video_pooled = video_branch(spec, cfg)
    audio_inputs, audio_pooled = audio_branch(spec, cfg)
    probs = fuse([video_pooled, audio_pooled], cfg, spec.num_classes)
    return keras.Model(video_inputs + audio_inputs, probs, name=f"av_fusion_{cfg.fusion}")
