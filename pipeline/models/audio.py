"""Audio branches: MFCCs (cached, or computed in-model from raw samples) -> one pooled state per clip.

    mfcc float32 [B, F, C], mfcc_length [B] --normalise (valid frames)--> --stack model.audio_stack frames--> rnn_head --> [B, H]
    waveform float32 [B, N], num_samples [B] --MFCC layer--> [B, F, C], SamplesToFrames --> (as above)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.models.heads import SequenceMask, StackSteps, rnn_head
from pipeline.models.spec import ModelSpec


def audio_branch(spec: ModelSpec, cfg):
    """Inputs and pooled state of the MFCC branch: [B, F, C] -> [B, H].

    A spec with a waveform and no cached MFCCs (train.source: raw_audio) gets the waveform branch
    instead: the MFCCs are computed in-model (waveform_branch).
    """
    if spec.mfcc is None and spec.waveform is not None:
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
    from pipeline.features.mfcc_layers import MFCCNormalization

    mode = spec.preprocess.normalize if spec.preprocess is not None else "utterance"
    stats = spec.mfcc_stats or {}
    return MFCCNormalization(mode=mode, mean=stats.get("mean"), std=stats.get("std"), name="mfcc_norm")


@keras.saving.register_keras_serializable(package="actrec")
class SamplesToFrames(layers.Layer):
    """Valid waveform samples [B] -> valid MFCC frames [B]: 1 + (n + offset) // hop, 0 for no samples (MFCCParams.num_frames)."""

    def __init__(self, hop_length: int, max_frames: int, offset: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.hop_length, self.max_frames, self.offset = hop_length, max_frames, offset

    @classmethod
    def from_params(cls, params, num_samples: int, **kwargs) -> "SamplesToFrames":
        return cls(params.hop_length, params.num_frames(num_samples), params.frame_offset, **kwargs)

    def call(self, num_samples):
        num_samples = ops.cast(num_samples, "int32")
        frames = 1 + ops.floor_divide(num_samples + self.offset, self.hop_length)
        return ops.where(num_samples > 0, ops.clip(frames, 0, self.max_frames), 0)

    def get_config(self):
        return {**super().get_config(), "hop_length": self.hop_length, "max_frames": self.max_frames, "offset": self.offset}


def waveform_branch(spec: ModelSpec, cfg):
    """Inputs and pooled state of an audio branch on raw samples: waveform [B, N] --MFCC layer--> [B, F, C] -> [B, H].

    Inputs: waveform float32 [B, N] (N = spec.waveform) and num_samples int32 [B] (valid samples;
    the frames computed from padding are masked).
    """
    from pipeline.features.mfcc import MFCCParams
    from pipeline.features.mfcc_layers import MFCC

    params = MFCCParams.from_config(spec.preprocess)
    waveform = keras.Input((spec.waveform,), name="waveform")
    num_samples = keras.Input((), dtype="int32", name="num_samples")
    mfcc = MFCC.from_params(params, name="mfcc")(waveform)  # [B, F, C]
    mfcc_length = SamplesToFrames.from_params(params, spec.waveform, name="mfcc_length")(num_samples)
    return [waveform, num_samples], audio_head(mfcc, mfcc_length, spec, cfg)
