"""Hybrid CNN-RNN trained end to end: raw uint8 frames (and a raw waveform) in, probabilities out.

    frames uint8 [B, T, S, S, 3] --TimeDistributed(frame encoder)--> [B, T, D] --rnn_head--> [B, H]
    waveform float32 [B, N] --MFCC layer--> [B, F, C] --audio_head (normalise, stack, rnn_head)--> [B, H]   (when audio is cached)
        --> fused like av_fusion --> probabilities [B, num_classes]

This is the graph that export can ship as is: everything from pixels and samples to
probabilities lives in the model. CPU cost is honest only with small frames, few frames
and a small encoder (`small_cnn` or MobileNetV3Small at 96-112 px).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.models.fusion import ModelSpec, _need, audio_head, fuse
from pipeline.models.heads import rnn_head


def set_encoder_trainable(encoder: keras.Model, mode: str, last_n: int) -> None:
    """model.encoder_trainable: 'false' freezes the CNN, 'true' trains all of it, 'last_n' its last N layers.

    BatchNormalization layers stay frozen in every mode: small video batches give noisy statistics.
    """
    encoder.trainable = mode != "false"
    if mode == "last_n":
        weighted = [l for l in _flat_layers(encoder) if l.weights]
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


@keras.saving.register_keras_serializable(package="actrec")
class SamplesToFrames(layers.Layer):
    """Valid waveform samples [B] -> valid MFCC frames [B] (centred STFT: 1 + n // hop)."""

    def __init__(self, hop_length: int, max_frames: int, **kwargs):
        super().__init__(**kwargs)
        self.hop_length, self.max_frames = hop_length, max_frames

    def call(self, num_samples):
        frames = 1 + ops.floor_divide(ops.cast(num_samples, "int32"), self.hop_length)
        return ops.minimum(frames, self.max_frames)

    def get_config(self):
        return {**super().get_config(), "hop_length": self.hop_length, "max_frames": self.max_frames}


def hybrid_cnn_rnn(spec: ModelSpec, cfg, encoder: keras.Model | None = None) -> keras.Model:
    """The end-to-end model; `encoder` defaults to preprocess.encoder (weights: preprocess.weights)."""
    from pipeline.features.encoders import FrameDifference, build_encoder

    _need(spec, "frames", "hybrid")
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

    if spec.waveform is not None:
        audio_inputs, audio_pooled = waveform_branch(spec, cfg)
        inputs += audio_inputs
        pooled.append(audio_pooled)
    return keras.Model(inputs, fuse(pooled, cfg, spec.num_classes), name="hybrid_cnn_rnn")


def waveform_branch(spec: ModelSpec, cfg):
    """Inputs and pooled state of an audio branch on raw samples: waveform [B, N] --MFCC layer--> [B, F, C] -> [B, H].

    Inputs: waveform float32 [B, N] (N = spec.waveform) and num_samples int32 [B] (valid samples;
    the frames computed from padding are masked).
    """
    from pipeline.features.mfcc import MFCC, MFCCParams

    params = MFCCParams.from_config(spec.preprocess)
    waveform = keras.Input((spec.waveform,), name="waveform")
    num_samples = keras.Input((), dtype="int32", name="num_samples")
    mfcc = MFCC.from_params(params, name="mfcc")(waveform)  # [B, F, C]
    mfcc_length = SamplesToFrames(params.hop_length, params.num_frames(spec.waveform), name="mfcc_length")(num_samples)
    return [waveform, num_samples], audio_head(mfcc, mfcc_length, spec, cfg)
