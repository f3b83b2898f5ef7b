"""Model builders on cached features: video-only, audio-only and audio-visual fusion.

Inputs are named as the cached features are (see preprocess.feature_schema):
    frame_features float32 [B, T, D] + frame_lengths int [B]    (video)
    mfcc           float32 [B, F, C] + mfcc_length   int [B]    (audio)
Output: class probabilities float32 [B, num_classes].

    late fusion:    each modality has its own classifier; their probabilities are averaged.
    mid fusion:     the pooled states are concatenated and one classifier decides.
    backoff fusion: mid fusion's classifier when both modalities are present, and each modality's own classifier
                    when it is alone (its weights and the fused classifier's are not shared).

A modality is present in a clip when its length input is > 0. An absent one (a video without a sound
track, `actrec evaluate --drop`, modality dropout in training) is gated out: its pooled state becomes
zeros (mid), its probabilities leave the average (late), or the other modality's own classifier answers (backoff).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.models.audio import audio_branch
from pipeline.models.heads import rnn_head
from pipeline.models.spec import ModelSpec, require_feature

MODALITIES = ("video", "audio")  # the order of pooled states and presences in fusion


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
    # The RNN wants unit-scale inputs. Frozen-CNN features have arbitrary scales: LayerNorm per frame. Motion features
    # mean something per channel (a strip's upward flow): the training set's statistics keep that (frame_stats).
    if spec.frame_stats:
        mean, std = spec.frame_stats["mean"], spec.frame_stats["std"]
        x = layers.Normalization(mean=mean, variance=[max(s, 1e-3) ** 2 for s in std], name="video_norm")(features)
    else:
        x = layers.LayerNormalization(name="video_norm")(features)
    return [features, lengths], rnn_head(x, lengths, cfg, "video")


@keras.saving.register_keras_serializable(package="actrec")
class Presence(layers.Layer):
    """lengths int [B] (valid frames or samples of one modality) -> present float32 [B, 1]: 1 if length > 0."""

    def call(self, lengths):
        return ops.cast(ops.greater(ops.reshape(lengths, (-1, 1)), 0), "float32")


@keras.saving.register_keras_serializable(package="actrec")
class Backoff(layers.Layer):
    """fused [B, K] when both modalities are present, else the present one's own probabilities [B, K] (video first).

    present [B, 1] each; with neither present the fused classifier answers (on zeros, as mid fusion does).
    """

    def call(self, fused, alone, present):
        (video, audio), (v, a) = alone, present
        return (v * a + (1.0 - v) * (1.0 - a)) * fused + v * (1.0 - a) * video + (1.0 - v) * a * audio


@keras.saving.register_keras_serializable(package="actrec")
class PresentAverage(layers.Layer):
    """Late fusion over the present modalities: probs [B, K] each, present [B, 1] each -> sum(p * w) / sum(w)."""

    def call(self, probs, present):
        total = sum(p * w for p, w in zip(probs, present))
        return total / ops.maximum(sum(present), 1.0)


def fuse(pooled: list, cfg, num_classes: int, lengths: list | None = None):
    """One pooled state [B, H] per modality (video first), with its length input [B] -> probabilities [B, num_classes]."""
    if len(pooled) == 1:
        return classifier(pooled[0], cfg, num_classes, "head")
    present = [Presence(name=f"{name}_present")(n) for n, name in zip(lengths, MODALITIES)]
    return fusion_head(pooled, present, cfg.fusion, lambda x, name: classifier(x, cfg, num_classes, name),
                       lambda kind, name: kind(name=name))


def fusion_head(pooled: list, present: list, fusion: str, classify, layer):
    """The fusion of two pooled states [B, H] (video first), each with its presence [B, 1] -> probabilities [B, K].

    classify(x, name): the classifier `name` (video, audio or fusion) on x; layer(kind, name): the layer `name` of class
    `kind`. `fuse` makes them new; a streaming step (models.streaming.AVStepper) takes the trained model's.
    """
    if fusion == "late":
        return layer(PresentAverage, "late_fusion")([classify(p, name) for p, name in zip(pooled, MODALITIES)], present)
    gated = [layer(layers.Multiply, f"{name}_gate")([p, w]) for p, w, name in zip(pooled, present, MODALITIES)]
    fused = classify(layer(layers.Concatenate, "mid_fusion")(gated), "fusion")
    if fusion == "backoff":
        # a linear classifier on [video, audio] adds one logit term per modality: a term trained to decide with the
        # other's help cannot also decide alone, so a modality alone gets a classifier of its own
        alone = [classify(p, name) for p, name in zip(gated, MODALITIES)]
        return layer(Backoff, "backoff_fusion")(fused, alone, present)
    return fused


def adopt_unimodal(model: keras.Model, modality: str, unimodal: keras.Model) -> None:
    """Copy a trained single-modality model (video_rnn or audio_rnn) into a backoff fusion model's layers of that
    modality and freeze them (train.unimodal_first).

    Its branch layers have the fusion model's names (`video_gru0`, `mfcc_norm`, ...), its classifier `head` becomes the
    modality's own (`video`): the fusion model with the other modality absent then answers as `unimodal` does.
    """
    for layer in unimodal.layers:
        if not layer.weights:
            continue
        name = f"{modality}_{layer.name[len('head_'):]}" if layer.name.startswith("head_") else layer.name
        target = model.get_layer(name)
        target.set_weights(layer.get_weights())
        target.trainable = False


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
    probs = fuse([video_pooled, audio_pooled], cfg, spec.num_classes, lengths=[video_inputs[1], audio_inputs[1]])
    return keras.Model(video_inputs + audio_inputs, probs, name=f"av_fusion_{cfg.fusion}")
