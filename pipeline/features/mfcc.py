"""MFCCs: the librosa reference, and a Keras layer computing the same numbers in-graph.

Preprocessing computes MFCCs with librosa (`librosa_mfcc`); an exported model that
takes a raw waveform computes them with the `MFCC` layer, built from TensorFlow ops
that the TFLite converter maps to builtins (no Flex ops). Both follow one recipe:

    waveform float32 [N]
      -> zero-pad n_fft // 2 on both sides             (librosa center=True, pad_mode="constant")
      -> frames [F, n_fft], F = 1 + N // hop             (even n_fft)
      -> periodic Hann window, real FFT, |.|^2           power spectrum [F, n_fft // 2 + 1]
      -> Slaney mel filterbank (librosa.filters.mel)     [F, n_mels]
      -> 10 log10(max(x, 1e-10)), floored at max - 80 dB (librosa.power_to_db, ref=1, top_db=80)
      -> orthonormal DCT-II, first n_mfcc coefficients   [F, n_mfcc]
      -> optionally + delta and delta-delta              [F, 3 n_mfcc] (librosa.feature.delta, width 9)

Features are time-major ([F, C]), the layout the RNN heads read.

Zero padding (not librosa's former "reflect" default) is chosen on purpose: audio that
`fit_length` pads with zeros then gives exactly the frames of the unpadded audio for the
first `params.num_frames(valid_samples)` frames, so masking the rest loses nothing.

Normalisation (`normalize_mfcc` in numpy for preprocessing, `MFCCNormalization` in a model)
is per utterance (zero mean, unit variance per coefficient) or with training-set statistics.

`tfio_load_audio` reads and resamples WAVs with TensorFlow / tensorflow-io ops, for tf.data
pipelines that feed raw waveforms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

# power_to_db constants (librosa's defaults): floor of the power before the log, and the
# dynamic range kept below each utterance's loudest bin.
AMIN = 1e-10
TOP_DB = 80.0
# librosa.feature.delta's default window: 9 frames (4 each side).
DELTA_WIDTH = 9
# Added to the standard deviation before dividing, so a constant coefficient (digital
# silence) normalises to 0 instead of NaN. Negligible against MFCC spreads of ~1-100 dB.
NORM_EPSILON = 1e-5
NORMALIZE_MODES = ("utterance", "dataset", "none")


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class MFCCParams:
    """Everything that decides the MFCC numbers; one instance per experiment."""

    sample_rate: int = 16000
    n_mfcc: int = 20
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 40
    fmin: float = 20.0
    fmax: Optional[float] = None  # None: sample_rate / 2
    deltas: bool = False

    @classmethod
    def from_config(cls, preprocess_cfg) -> "MFCCParams":
        """The MFCC fields of a `PreprocessConfig` (or any object with the same attributes)."""
        return cls(**{f.name: getattr(preprocess_cfg, f.name) for f in dataclasses.fields(cls)})

    @property
    def fmax_hz(self) -> float:
        return float(self.fmax) if self.fmax is not None else self.sample_rate / 2.0

    @property
    def feature_dim(self) -> int:
        """C: coefficients per frame (n_mfcc, tripled with deltas)."""
        return self.n_mfcc * (3 if self.deltas else 1)

    def num_frames(self, num_samples: int) -> int:
        """F for a waveform of num_samples (librosa center=True): 1 + num_samples // hop for even n_fft."""
        padded = num_samples + 2 * (self.n_fft // 2)
        return 1 + (padded - self.n_fft) // self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- shared constants


def mel_matrix(params: MFCCParams) -> np.ndarray:
    """float32 [n_fft // 2 + 1, n_mels]: librosa's Slaney mel filterbank, transposed for `power @ mel`."""
    import librosa

    mel = librosa.filters.mel(
        sr=params.sample_rate,
        n_fft=params.n_fft,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax_hz,
        htk=False,
        norm="slaney",
        dtype=np.float32,
    )
    return np.ascontiguousarray(mel.T)


def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """float32 [n_mels, n_mfcc]: orthonormal DCT-II, so that `log_mel @ dct` = scipy's dct(..., norm="ortho")."""
    import scipy.fft

    # Transforming the identity gives the matrix whose column j is the DCT of basis vector j.
    basis = scipy.fft.dct(np.eye(n_mels, dtype=np.float64), type=2, norm="ortho", axis=0)
    return np.ascontiguousarray(basis[:n_mfcc].T.astype(np.float32))


def delta_kernel(order: int, width: int = DELTA_WIDTH) -> np.ndarray:
    """float32 [width]: correlation weights of librosa.feature.delta(order) away from the edges.

    librosa's delta is a Savitzky-Golay filter with polyorder == deriv == order. Filtering the
    identity gives its matrix; the middle row holds the interior weights (x[t-4..t+4]).
    """
    import scipy.signal

    rows = scipy.signal.savgol_filter(np.eye(width), width, polyorder=order, deriv=order, mode="interp", axis=0)
    return rows[width // 2].astype(np.float32)


def hann_window(n_fft: int) -> np.ndarray:
    """float32 [n_fft]: the periodic Hann window librosa's STFT uses (scipy get_window fftbins=True)."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


# ----------------------------------------------------------------------------- the reference


def librosa_mfcc(waveform: np.ndarray, params: MFCCParams) -> np.ndarray:
    """The reference MFCC, computed by librosa.

    Args:
        waveform: float32 [N] at params.sample_rate.
        params: MFCC settings.

    Returns:
        mfcc: float32 [F, C], F = params.num_frames(N), C = params.feature_dim
        (coefficients, then deltas, then delta-deltas when params.deltas).
    """
    import librosa

    waveform = np.asarray(waveform, dtype=np.float32)
    mfcc = librosa.feature.mfcc(
        y=waveform,
        sr=params.sample_rate,
        n_mfcc=params.n_mfcc,
        dct_type=2,
        norm="ortho",
        lifter=0,
        # melspectrogram / stft arguments
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax_hz,
        htk=False,
    )  # [n_mfcc, F]; power_to_db inside uses ref=1.0, amin=1e-10, top_db=80
    if params.deltas:
        _check_delta_frames(mfcc.shape[1])
        d1 = librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=1, mode="interp")
        d2 = librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=2, mode="interp")
        mfcc = np.concatenate([mfcc, d1, d2], axis=0)
    return np.ascontiguousarray(mfcc.T.astype(np.float32))


def _check_delta_frames(num_frames: int) -> None:
    if num_frames < DELTA_WIDTH:
        raise ValueError(
            f"MFCC deltas need at least {DELTA_WIDTH} frames; got {num_frames} "
            "(use a longer audio window or deltas: false)"
        )


# ----------------------------------------------------------------------------- the Keras layer


@keras.saving.register_keras_serializable(package="actrec")
class MFCC(keras.layers.Layer):
    """Waveforms to MFCCs inside a model, matching `librosa_mfcc` (max difference ~1e-5 dB).

    Input:  waveform float32 [B, N] at `sample_rate`.
    Output: mfcc float32 [B, F, C], F = 1 + N // hop_length (even n_fft), C = n_mfcc (x3 with deltas).

    Every constant (window, mel filterbank, DCT, delta weights) is rebuilt from the
    constructor arguments, so the layer has no weights and `get_config` is all a .keras
    file needs. For TFLite, n_fft must be a power of two (the RFFT2D kernel's limit)
    and the input length fixed (the export graph uses batch 1, N samples).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mfcc: int = 20,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 40,
        fmin: float = 20.0,
        fmax: Optional[float] = None,
        deltas: bool = False,
        **kwargs,
    ):
        # The FFT has no float16 kernel; keep this layer float32 under a mixed-precision policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.params = MFCCParams(
            sample_rate=int(sample_rate),
            n_mfcc=int(n_mfcc),
            n_fft=int(n_fft),
            hop_length=int(hop_length),
            n_mels=int(n_mels),
            fmin=float(fmin),
            fmax=None if fmax is None else float(fmax),
            deltas=bool(deltas),
        )
        self._window = hann_window(self.params.n_fft)
        self._mel = mel_matrix(self.params)
        self._dct = dct_matrix(self.params.n_mels, self.params.n_mfcc)
        self._dct_of_ones = np.zeros(self.params.n_mfcc, dtype=np.float32)
        self._dct_of_ones[0] = math.sqrt(self.params.n_mels)
        self._delta_kernels = (delta_kernel(1), delta_kernel(2)) if self.params.deltas else ()

    @classmethod
    def from_params(cls, params: MFCCParams, **kwargs) -> "MFCC":
        return cls(**params.to_dict(), **kwargs)

    def call(self, waveform):
        p = self.params
        waveform = tf.convert_to_tensor(waveform, dtype=tf.float32)
        # center=True with zeros: frame t is centred on sample t * hop.
        half = p.n_fft // 2
        padded = tf.pad(waveform, [[0, 0], [half, half]])
        frames = tf.signal.frame(padded, frame_length=p.n_fft, frame_step=p.hop_length, axis=-1)  # [B, F, n_fft]
        spectrum = tf.signal.rfft(frames * self._window, fft_length=[p.n_fft])  # [B, F, n_fft/2+1] complex64
        # |X|^2 from real and imaginary parts: squaring a complex abs would lose precision to the sqrt.
        power = tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum))
        mel = tf.matmul(power, self._mel)  # [B, F, n_mels]
        log_mel = (10.0 / math.log(10.0)) * tf.math.log(tf.maximum(mel, AMIN))
        # top_db is relative to each utterance's loudest bin, as librosa does per call.
        loudest = tf.reduce_max(log_mel, axis=[1, 2], keepdims=True)
        log_mel = tf.maximum(log_mel, loudest - TOP_DB)
        # DCT as a matmul, on log-mels centred per frame: summing 40 values of ~-70 dB in float32
        # loses ~2e-4 to rounding, centred values sum near 0. The mean goes back in through the
        # DCT of a constant, which is sqrt(n_mels) in coefficient 0 and exactly 0 elsewhere.
        frame_mean = tf.reduce_mean(log_mel, axis=-1, keepdims=True)  # [B, F, 1]
        mfcc = tf.matmul(log_mel - frame_mean, self._dct) + frame_mean * self._dct_of_ones  # [B, F, n_mfcc]
        if not p.deltas:
            return mfcc
        if mfcc.shape[1] is not None:  # known when the input length is (always for export graphs)
            _check_delta_frames(mfcc.shape[1])
        return tf.concat([mfcc, self._delta(mfcc, 0), self._delta(mfcc, 1)], axis=-1)

    def _delta(self, x, which: int):
        """x: [B, F, n_mfcc] -> its delta (which=0) or delta-delta (which=1) along time, like librosa.

        Interior frames are a 9-tap correlation, written as a weighted sum of shifted slices
        (plain STRIDED_SLICE/MUL/ADD in TFLite). At the edges librosa's mode="interp" fits one
        polynomial of degree `order` to the first (last) 9 frames and evaluates its order-th
        derivative there, which is a constant: the first (last) interior value. So the edges
        are that value repeated 4 times, exactly librosa's result.
        """
        kernel = self._delta_kernels[which]
        width = kernel.shape[0]
        valid = tf.shape(x)[1] - (width - 1)
        interior = None
        for k, weight in enumerate(kernel):
            if abs(weight) < 1e-12:  # the centre tap of the first-order kernel is 0
                continue
            term = float(weight) * x[:, k : k + valid]
            interior = term if interior is None else interior + term
        half = width // 2
        first, last = interior[:, :1], interior[:, -1:]
        return tf.concat([first] * half + [interior] + [last] * half, axis=1)

    def compute_output_shape(self, input_shape):
        batch, n = input_shape[0], input_shape[-1]
        frames = None if n is None else self.params.num_frames(n)
        return (batch, frames, self.params.feature_dim)

    def get_config(self):
        config = super().get_config()
        config.update(self.params.to_dict())
        return config


# ----------------------------------------------------------------------------- normalisation


def normalize_mfcc(
    mfcc: np.ndarray,
    valid_frames: int,
    mode: str,
    stats: Optional[tuple[Sequence[float], Sequence[float]]] = None,
) -> np.ndarray:
    """Normalise an MFCC sequence per coefficient; frames past `valid_frames` become 0.

    Args:
        mfcc: float32 [F, C].
        valid_frames: frames computed from real audio (params.num_frames(valid_samples)); the rest
            came from padding and are excluded from the statistics, then zeroed (in every mode,
            so padding carries no signal whatever the model does with the mask).
        mode: "utterance" (this sequence's mean/std over its valid frames), "dataset" (`stats`),
            or "none".
        stats: (mean float [C], std float [C]) from `dataset_stats`, for mode "dataset".

    Returns:
        float32 [F, C]: (mfcc - mean) / (std + NORM_EPSILON) on valid frames, 0 after.
    """
    mfcc = np.asarray(mfcc, dtype=np.float32)
    valid_frames = int(min(max(valid_frames, 0), mfcc.shape[0]))
    if mode == "none":
        out = mfcc.copy()
    elif mode == "utterance":
        valid = mfcc[:valid_frames].astype(np.float64)
        mean = valid.mean(axis=0) if valid_frames else np.zeros(mfcc.shape[1])
        std = valid.std(axis=0) if valid_frames else np.ones(mfcc.shape[1])
        out = ((mfcc - mean) / (std + NORM_EPSILON)).astype(np.float32)
    elif mode == "dataset":
        if stats is None:
            raise ValueError("normalize mode 'dataset' needs stats=(mean, std) from the training set")
        mean, std = (np.asarray(s, dtype=np.float64) for s in stats)
        out = ((mfcc - mean) / (std + NORM_EPSILON)).astype(np.float32)
    else:
        raise ValueError(f"normalize mode must be one of {', '.join(NORMALIZE_MODES)}; got {mode!r}")
    out[valid_frames:] = 0.0
    return out


def dataset_stats(sequences: Iterable[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient (mean float32 [C], std float32 [C]) over the valid frames of (mfcc [F, C], valid_frames) pairs.

    Accumulates in float64 sums, so any number of sequences fits in memory.
    """
    count, total, total_sq = 0, None, None
    for mfcc, valid_frames in sequences:
        valid = np.asarray(mfcc, dtype=np.float64)[: int(valid_frames)]
        if total is None:
            total, total_sq = np.zeros(valid.shape[1]), np.zeros(valid.shape[1])
        count += valid.shape[0]
        total += valid.sum(axis=0)
        total_sq += np.square(valid).sum(axis=0)
    if not count:
        raise ValueError("dataset_stats: no valid frames in the training sequences")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


@keras.saving.register_keras_serializable(package="actrec")
class MFCCNormalization(keras.layers.Layer):
    """`normalize_mfcc` inside a model.

    Input: mfcc float32 [B, F, C] (and optionally a Keras mask bool [B, F] of valid frames).
    Output: float32 [B, F, C].

    mode="utterance" computes mean/std per example over the valid frames (over all frames when
    there is no mask). In a deployed model the input is one full audio window with no padding
    (the app records `audio_seconds` of sound), so the all-frames statistics are the
    valid-frame statistics preprocessing used. mode="dataset" uses the training-set `mean`/`std`
    stored in the config; mode="none" passes values through. Masked frames are set to 0.
    """

    def __init__(self, mode: str = "utterance", mean=None, std=None, epsilon: float = NORM_EPSILON, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize mode must be one of {', '.join(NORMALIZE_MODES)}; got {mode!r}")
        if mode == "dataset" and (mean is None or std is None):
            raise ValueError("MFCCNormalization(mode='dataset') needs the training-set mean and std")
        self.mode = mode
        self.mean = None if mean is None else [float(v) for v in np.ravel(mean)]
        self.std = None if std is None else [float(v) for v in np.ravel(std)]
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def call(self, mfcc, mask=None):
        mfcc = tf.convert_to_tensor(mfcc, dtype=tf.float32)
        weights = None if mask is None else tf.cast(mask, tf.float32)[:, :, None]  # [B, F, 1]
        if self.mode == "utterance":
            if weights is None:
                mean = tf.reduce_mean(mfcc, axis=1, keepdims=True)
                var = tf.reduce_mean(tf.square(mfcc - mean), axis=1, keepdims=True)
            else:
                count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
                mean = tf.reduce_sum(mfcc * weights, axis=1, keepdims=True) / count
                var = tf.reduce_sum(tf.square(mfcc - mean) * weights, axis=1, keepdims=True) / count
            out = (mfcc - mean) / (tf.sqrt(var) + self.epsilon)
        elif self.mode == "dataset":
            mean = tf.constant(self.mean, dtype=tf.float32)
            std = tf.constant(self.std, dtype=tf.float32)
            out = (mfcc - mean) / (std + self.epsilon)
        else:
            out = mfcc
        if weights is not None:
            out = out * weights
        return out

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "mean": self.mean, "std": self.std, "epsilon": self.epsilon})
        return config


# ----------------------------------------------------------------------------- tf.data loading


def tfio_load_audio(path, sample_rate: int):
    """Read a 16-bit PCM WAV and resample it in-graph (for tf.data raw-waveform pipelines).

    Args:
        path: string tensor (scalar), a WAV file.
        sample_rate: output rate in Hz.

    Returns:
        waveform: float32 [N'] mono (channels averaged), N' = ceil(N * sample_rate / file rate),
        the length `pipeline.media.audio.load_audio` returns.

    Decoding is TensorFlow's own tf.audio.decode_wav, because it also returns the file's rate as a
    tensor (tfio.audio.decode_wav does not); resampling is tensorflow-io's tfio.audio.resample.
    Other formats go through `load_audio` (e.g. inside tf.numpy_function).
    """
    # Imported here: tensorflow-io takes seconds to import and logs warnings, and only this
    # function needs it.
    import tensorflow_io as tfio

    audio, rate = tf.audio.decode_wav(tf.io.read_file(path))  # [N, channels], int32 scalar
    mono = tf.reduce_mean(audio, axis=-1, keepdims=True)  # [N, 1]
    rate_in = tf.cast(rate, tf.int64)
    rate_out = tf.constant(int(sample_rate), tf.int64)

    def resample():
        # tfio.audio.resample does not remove its filter's delay (32 samples at the lower rate,
        # 2 ms from 22.05 kHz to 16 kHz) and stops that much short at the end. Measure the delay
        # from the response to an impulse, feed trailing zeros to flush the filter, and cut out
        # the aligned window: the result lines up with soxr/librosa to a fraction of a sample.
        impulse = tf.one_hot([0], 4096, dtype=tf.float32)[0][:, None]
        delay = tf.argmax(tfio.audio.resample(impulse, rate_in=rate_in, rate_out=rate_out)[:, 0], output_type=tf.int64)
        num_in = tf.shape(mono, out_type=tf.int64)[0]
        num_out = (num_in * rate_out + rate_in - 1) // rate_in  # ceil, as librosa.resample
        flush = tf.zeros([rate_in // 10, 1], tf.float32)  # 100 ms, far more than the delay
        out = tfio.audio.resample(tf.concat([mono, flush], axis=0), rate_in=rate_in, rate_out=rate_out)[:, 0]
        return out[delay : delay + num_out]

    return tf.cond(tf.equal(rate_in, rate_out), lambda: mono[:, 0], resample)
