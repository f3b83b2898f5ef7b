"""Hybrid CNN-RNN trained end to end: raw uint8 frames (and a raw waveform) in, probabilities out.

    frames uint8 [B, T, S, S, 3] --TimeDistributed(frame encoder)--> [B, T, D] --rnn_head--> [B, H]
    waveform float32 [B, N] --MFCC layer--> [B, F, C] --audio_head (normalise, stack, rnn_head)--> [B, H]   (when audio is cached)
        --> fused like av_fusion (a modality whose length input is 0 is gated out) --> probabilities [B, num_classes]

This is the graph that export can ship as is: everything from pixels and samples to
probabilities lives in the model. CPU cost is honest only with small frames, few frames
and a small encoder (`small_cnn` or MobileNetV3Small at 96-112 px).
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models.audio import waveform_branch
from pipeline.models.fusion import fuse
from pipeline.models.heads import rnn_head
from pipeline.models.spec import ModelSpec, require_feature


def set_encoder_trainable(encoder: keras.Model, mode: str, last_n: int) -> None:
    """model.encoder_trainable: 'false' freezes the CNN, 'true' trains all of it, 'last_n' its last N layers.

    BatchNormalization layers stay frozen in every mode: small video batches give noisy statistics.
    """
    encoder.trainable = mode != "false"
    if mode == "last_n":
        weighted = [layer for layer in _flat_layers(encoder) if layer.weights]
        for i, layer in enumerate(weighted):
            layer.trainable = i >= len(weighted) - last_n
    for layer in _flat_layers(encoder):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def _flat_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def hybrid_cnn_rnn(spec: ModelSpec, cfg, encoder: keras.Model | None = None) -> keras.Model:
    """The end-to-end model; `encoder` defaults to preprocess.encoder (weights: preprocess.weights)."""
    from pipeline.features.encoders import FrameDifference, build_encoder

    require_feature(spec, "frames", "hybrid")
    p = spec.preprocess
    t, s, _ = spec.frames
    encoder_name = p.encoder if p.encoder != "none" else "small_cnn"
    # preprocess.weights starts the CNN from a file, e.g. the frame_encoder.weights.h5 of a video-only hybrid run
    encoder = encoder or build_encoder(encoder_name, s, p.weights, seed=spec.seed)
    set_encoder_trainable(encoder, cfg.encoder_trainable if p.encoder != "none" else "true", cfg.encoder_last_n)

    frames = keras.Input((t, s, s, 3), dtype="uint8", name="frames")
    frame_lengths = keras.Input((), dtype="int32", name="frame_lengths")
    pixels = FrameDifference(name="frame_difference")(frames) if p.frame_difference else frames
    features = layers.TimeDistributed(encoder, name="frame_encoder")(pixels)  # [B, T, D]
    features = layers.LayerNormalization(name="video_norm")(features)
    inputs, pooled = [frames, frame_lengths], [rnn_head(features, frame_lengths, cfg, "video")]
    lengths = [frame_lengths]

    if spec.waveform is not None:
        audio_inputs, audio_pooled = waveform_branch(spec, cfg)  # waveform, num_samples
        inputs += audio_inputs
        pooled.append(audio_pooled)
        lengths.append(audio_inputs[1])
    return keras.Model(inputs, fuse(pooled, cfg, spec.num_classes, lengths), name="hybrid_cnn_rnn")
