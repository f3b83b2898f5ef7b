"""Audio branches: MFCCs (cached, or computed in-model from raw samples) -> one pooled state per clip.

    mfcc float32 [B, F, C], mfcc_length [B] --normalise (valid frames)--> (--model.freq_conv: FrequencyConv--> [B, F, C'])
        --stack model.audio_stack frames--> rnn_head --> [B, H]
    waveform float32 [B, N], num_samples [B] --MFCC layer--> [B, F, C], SamplesToFrames --> (as above)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.models.heads import MaskConsumer, SequenceMask, StackSteps, inherit_trainable, rnn_head
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
    """MFCCs [B, F, C] (lengths [B]) -> normalised (and convolved over mel bands) frames, model.audio_stack per step
    -> rnn_head -> [B, H]."""
    # Per-utterance statistics over the valid frames only: padding must not shift the mean.
    frames = SequenceMask(name="mfcc_norm_mask")(mfcc, lengths)
    x = mfcc_normalization(spec)(mfcc, mask=frames)
    if cfg.freq_conv:
        x = FrequencyConv.from_spec(spec, cfg.freq_conv, name="audio_freq_conv")(x, frames)
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


@keras.saving.register_keras_serializable(package="actrec")
class FrequencyConv(MaskConsumer):
    """Per frame, convolution over mel bands: normalised MFCCs [B, F, C] -> [B, F, C + M / 4 x filters].

    Each frame's n_mfcc coefficients (not their deltas) --inverse DCT (fixed)--> a smoothed log-mel envelope [B, F, M]
    --conv (1 x 5, filters / 2) relu, max-pool 2 over bands--> --conv (1 x 5, filters) relu, max-pool 2-->
    [B, F, M / 4 x filters], concatenated after the MFCCs. Frames outside `valid` [B, F] (if given) come out zero.
    Nothing looks at another frame, so a stream computes the same values one hop at a time.
    """

    def __init__(self, n_mels: int, n_mfcc: int, filters: int, **kwargs):
        from pipeline.features.mfcc import dct_matrix

        super().__init__(**kwargs)
        self.n_mels, self.n_mfcc, self.filters = n_mels, n_mfcc, filters
        self.convs = [layers.Conv2D(f, (1, 5), padding="same", activation="relu", name=f"conv{i}")
                      for i, f in enumerate((max(filters // 2, 1), filters))]
        self._inverse_dct = dct_matrix(n_mels, n_mfcc).T  # [n_mfcc, M]: orthonormal, so its transpose inverts it
        self._conv_inputs, bands, channels = [], n_mels, 1  # (bands, channels) into each convolution
        for conv in self.convs:
            self._conv_inputs.append((bands, channels))
            bands, channels = -(-bands // 2), conv.filters  # each max-pool halves the bands, rounding up ("same")
        self._bands_out = bands

    @classmethod
    def from_spec(cls, spec: ModelSpec, filters: int, **kwargs) -> "FrequencyConv":
        """The run's n_mels and n_mfcc (a spec without preprocessing settings: the defaults' mel bands, every coefficient)."""
        from pipeline.config import PreprocessConfig

        if spec.preprocess is not None:
            return cls(spec.preprocess.n_mels, spec.preprocess.n_mfcc, filters, **kwargs)
        return cls(PreprocessConfig().n_mels, spec.mfcc[1], filters, **kwargs)

    def build(self, mfcc_shape, valid_shape=None):
        inherit_trainable(self, self.convs)
        for conv, (bands, channels) in zip(self.convs, self._conv_inputs):
            conv.build((None, None, bands, channels))

    def call(self, mfcc, valid=None):  # not `mask`: Keras would fill that argument in itself
        x = ops.matmul(mfcc[..., : self.n_mfcc], self._inverse_dct)[..., None]  # [B, F, M, 1]
        for conv in self.convs:
            x = ops.max_pool(conv(x), (1, 2), strides=(1, 2), padding="same")
        bands = ops.reshape(x, (-1, ops.shape(x)[1], x.shape[2] * x.shape[3]))  # [B, F, M / 4 x filters]
        out = ops.concatenate([mfcc, bands], axis=-1)
        return out if valid is None else out * ops.cast(valid, out.dtype)[..., None]

    def compute_output_shape(self, mfcc_shape, valid_shape=None):
        return (*mfcc_shape[:2], mfcc_shape[2] + self._bands_out * self.filters)

    def get_config(self):
        return {**super().get_config(), "n_mels": self.n_mels, "n_mfcc": self.n_mfcc, "filters": self.filters}
