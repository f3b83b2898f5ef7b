"""The in-graph half of pipeline.features.mfcc: Keras layers and the tf.data audio loader.

`MFCC` computes exactly the recipe of `mfcc.librosa_mfcc` (see that module's docstring) from
TensorFlow ops that convert to TFLite builtins; `MFCCNormalization` is `mfcc.normalize_mfcc`
inside a model.
"""

from __future__ import annotations

import math
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from pipeline.features.mfcc import (
    AMIN,
    NORM_EPSILON,
    NORMALIZE_MODES,
    RUNNING_PRIOR_FRAMES,
    TOP_DB,
    MFCCParams,
    check_delta_frames,
    dct_matrix,
    delta_kernel,
    hann_window,
    mel_matrix,
)

MIN_DB = 10.0 * math.log10(AMIN)  # -100 dB: power_to_db's floor

# ----------------------------------------------------------------------------- the Keras layer


@keras.saving.register_keras_serializable(package="actrec")
class MFCC(keras.layers.Layer):
    """Waveforms to MFCCs inside a model, matching `librosa_mfcc`.

    Measured on espeak-ng speech (30 clips of data_prep.commands plus a clean sentence): max
    |difference| 6.1e-5 on MFCCs whose values reach ~550 in magnitude (coefficient 0; the others
    stay within ~170), i.e. 1-2 float32 ulps at that size (`librosa_mfcc` runs in float64).
    A plain float32 FFT gets 1.8e-4 on clean speech: see `_power_spectrum` for why and what fixes it.

    Input:  waveform float32 [B, N] at `sample_rate`.
    Output: mfcc float32 [B, F, C], F = params.num_frames(N) (1 + N // hop_length centred with an even
    n_fft, N // hop_length causal), C = n_mfcc (x3 with deltas).

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
        framing: str = "centred",
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
            framing=str(framing),
        )
        self._window = hann_window(self.params.n_fft)
        self._mel = mel_matrix(self.params)
        self._dct = dct_matrix(self.params.n_mels, self.params.n_mfcc)
        self._dct_of_ones = np.zeros(self.params.n_mfcc, dtype=np.float32)
        self._dct_of_ones[0] = math.sqrt(self.params.n_mels)
        self._delta_kernels = (delta_kernel(1), delta_kernel(2)) if self.params.deltas else ()
        self._differences = _difference_constants(self.params.n_fft)

    @classmethod
    def from_params(cls, params: MFCCParams, **kwargs) -> "MFCC":
        return cls(**params.to_dict(), **kwargs)

    def call(self, waveform):
        return self.waveform_to_mfcc(waveform)

    def waveform_to_mfcc(self, waveform, filterbank=None):
        """waveform float32 [B, N] -> mfcc [B, F, C]; filterbank: float32 [n_fft/2+1, n_mels] in place of
        `self.filterbank` (training's vocal tract length perturbation, augment.warp_filterbank)."""
        p = self.params
        waveform = tf.convert_to_tensor(waveform, dtype=tf.float32)
        # centred: frame t is centred on sample t * hop; causal: it ends at sample (t + 1) * hop.
        padded = tf.pad(waveform, [[0, 0], list(p.padding)])
        return self.frames_to_mfcc(frame_signal(padded, p.n_fft, p.hop_length), filterbank)

    @property
    def filterbank(self) -> np.ndarray:
        """float32 [n_fft/2+1, n_mels]: the mel filterbank (`power @ filterbank`)."""
        return self._mel

    def frames_to_mfcc(self, frames, filterbank=None):
        """frames: float32 [B, F, n_fft] (raw samples, not windowed) -> mfcc [B, F, C].

        A streaming model calls this on the newest frames alone: with framing="causal" each
        output frame depends on its own input frame only (no per-utterance floor, no deltas).
        """
        p = self.params
        power = self._power_spectrum(frames)  # [B, F, n_fft/2+1]
        mel = tf.matmul(power, self._mel if filterbank is None else filterbank)  # [B, F, n_mels]
        log_mel = (10.0 / math.log(10.0)) * tf.math.log(tf.maximum(mel, AMIN))
        # The same floor again in dB, which float16 can hold: a float16 file rounds AMIN (1e-10) to 0, and digital
        # silence then gave log(0) = -inf and NaN probabilities. Equal to the line above in float32.
        log_mel = tf.maximum(log_mel, MIN_DB)
        if not p.causal:
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
            check_delta_frames(mfcc.shape[1])
        return tf.concat([mfcc, self._delta(mfcc, 0), self._delta(mfcc, 1)], axis=-1)

    def _power_spectrum(self, frames):
        """frames: float32 [B, F, n_fft] (not yet windowed) -> |rfft(window * frames)|^2 float32 [B, F, n_fft/2+1].

        Why not just the FFT: a float32 FFT adds rounding noise ~1e-7 of the frame's norm to
        every bin. In clean speech a frame's quiet bins lie 70-80 dB below its loud ones yet above
        the utterance's top_db floor, and there that noise moves the dB value by ~3e-4 and the
        MFCCs by 1.8e-4 (librosa's FFT runs in float64). So the spectrum is also computed from the
        frame's first and second circular differences, y = (1 - z^-1)^k (window * frames): their
        DFT is exactly H_k(bin) times the frame's DFT, with |H_1|^2 = 4 sin^2(pi bin / n_fft) and
        |H_2| = |H_1|^2, but their norm is far smaller for speech (its energy is at low
        frequencies), and so is their rounding noise. Each bin takes the estimate with the least
        predicted noise, ||y|| / |H|; the plain FFT keeps the bins where the filters are weak
        (near 0 Hz). Plain slices, multiplies, RFFT and SELECT: all TFLite builtins.

        The differences are taken on the raw samples before windowing, where neighbouring
        samples nearly cancel exactly (x_n - x_{n-1} rounds relative to the small result, not to
        x), plus a small correction from the window's own differences.
        """
        n_fft = self.params.n_fft
        window = self._window
        step_1, step_2, gain_1, gain_2 = self._differences

        def shift(x, k):  # x_{n-k}, circularly within each frame (concat of slices: no ROLL op in TFLite)
            return tf.concat([x[..., n_fft - k :], x[..., : n_fft - k]], axis=-1)

        def power(y):  # |rfft(y)|^2 from real and imaginary parts: |.| would lose precision to the sqrt
            spectrum = tf.signal.rfft(y, fft_length=[n_fft])
            return tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum))

        def norm(y):  # [B, F, 1]
            return tf.sqrt(tf.reduce_sum(tf.square(y), axis=-1, keepdims=True))

        previous, before_previous = shift(frames, 1), shift(frames, 2)
        first = frames - previous  # x_n - x_{n-1}
        second = first - (previous - before_previous)  # x_n - 2 x_{n-1} + x_{n-2}
        windowed = frames * window
        # w_n x_n - w_{n-1} x_{n-1}, and w_n x_n - 2 w_{n-1} x_{n-1} + w_{n-2} x_{n-2}:
        first_windowed = window * first + step_1 * previous
        second_windowed = window * second + 2.0 * step_1 * previous - step_2 * before_previous

        best, best_noise = power(windowed), norm(windowed)
        for y, gain in ((first_windowed, gain_1), (second_windowed, gain_2)):
            usable = gain > 0.0  # the filters vanish at 0 Hz
            noise = norm(y) / np.where(usable, gain, 1.0)  # [B, F, bins]
            better = tf.logical_and(usable, noise < best_noise)
            best = tf.where(better, power(y) / np.where(usable, gain * gain, 1.0), best)
            best_noise = tf.where(better, noise, best_noise)
        return best

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


def frame_signal(signal, frame_length: int, frame_step: int):
    """signal [B, L] -> frames [B, F, frame_length], F = 1 + (L - frame_length) // frame_step: frame t is
    signal[:, t * frame_step : t * frame_step + frame_length], exactly tf.signal.frame(..., axis=-1).

    tf.signal.frame converts to a GATHER with an int32 table of F x (frame_length / gcd) indices (25 KB
    in each TFLite file of the 4 s action model, float and int8 alike). Here the signal is cut into blocks of one
    hop and frame t is blocks t, t+1, ... side by side, the last one cut short: a RESHAPE, a few
    STRIDED_SLICEs and a CONCATENATION, no table. Only values are moved, so the frames are identical.
    """
    batch, length = tf.shape(signal)[0], signal.shape[-1]
    if length is None:  # a model with a variable number of samples
        length = tf.shape(signal)[-1]
    num_frames = 1 + (length - frame_length) // frame_step
    whole, rest = divmod(frame_length, frame_step)  # blocks a frame spans in full, samples of the last one
    num_blocks = num_frames + whole - (0 if rest else 1)
    used = num_blocks * frame_step  # up to one hop past the signal's end: zeros no frame reads
    extra = max(used - length, 0) if isinstance(length, int) else tf.maximum(used - length, 0)
    signal = tf.pad(signal, [[0, 0], [0, extra]])[:, :used]
    blocks = tf.reshape(signal, [batch, num_blocks, frame_step])
    pieces = [blocks[:, j : j + num_frames] for j in range(whole)]
    if rest:
        pieces.append(blocks[:, whole : whole + num_frames, :rest])
    return tf.concat(pieces, axis=-1)


def _difference_constants(n_fft: int) -> tuple[np.ndarray, ...]:
    """The constants of `MFCC._power_spectrum`, computed in float64 and stored as float32.

    Returns:
        step_1: [n_fft] w_n - w_{n-1} (circular) of the periodic Hann window w.
        step_2: [n_fft] w_n - w_{n-2}.
        gain_1: [n_fft // 2 + 1] |1 - e^{-2 pi i k / n_fft}| = 2 sin(pi k / n_fft), the first difference's gain per bin.
        gain_2: [n_fft // 2 + 1] gain_1^2, the second difference's.
    """
    window = hann_window(n_fft, dtype=np.float64)
    gain_1 = 2.0 * np.sin(np.pi * np.arange(n_fft // 2 + 1) / n_fft)
    constants = (window - np.roll(window, 1), window - np.roll(window, 2), gain_1, gain_1**2)
    return tuple(c.astype(np.float32) for c in constants)


# ----------------------------------------------------------------------------- normalisation


@keras.saving.register_keras_serializable(package="actrec")
class MFCCNormalization(keras.layers.Layer):
    """`normalize_mfcc` inside a model.

    Input: mfcc float32 [B, F, C] (and optionally a Keras mask bool [B, F] of valid frames).
    Output: float32 [B, F, C].

    mode="utterance" computes mean/std per example over the valid frames (over all frames when
    there is no mask). In a deployed model the input is one full audio window with no padding
    (the app records `audio_seconds` of sound), so the all-frames statistics are the
    valid-frame statistics preprocessing used. mode="dataset" uses the training-set `mean`/`std`
    stored in the config; mode="running" each frame's causal statistics, starting from those (`running`: also a
    stream's hop at a time); mode="none" passes values through. Masked frames are set to 0.
    """

    def __init__(self, mode: str = "utterance", mean=None, std=None, epsilon: float = NORM_EPSILON, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize mode must be one of {', '.join(NORMALIZE_MODES)}; got {mode!r}")
        if mode in ("dataset", "running") and (mean is None or std is None):
            raise ValueError(f"MFCCNormalization(mode={mode!r}) needs the training-set mean and std")
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
        elif self.mode == "running":  # causal: the padding after the valid frames changes none of them
            out, _ = self.running(mfcc, self.running_start(tf.shape(mfcc)[0]))
        else:
            out = mfcc
        if weights is not None:
            out = out * weights
        return out

    def running_start(self, batch) -> tuple:
        """`running` normalisation's memory before the first frame: (S [B, C], Q [B, C], n [B, 1]), zeros."""
        c = len(self.mean)
        return tf.zeros([batch, c]), tf.zeros([batch, c]), tf.zeros([batch, 1])

    def running(self, mfcc, memory: tuple):
        """`running` normalisation (mfcc.py's formula) of frames [B, F, C] that follow `memory` (S, Q, n) -> (out
        [B, F, C], the memory after them): a whole utterance from running_start, or a stream's hop at a time."""
        sums, squares, count = memory
        mean, std = tf.constant(self.mean, tf.float32), tf.constant(self.std, tf.float32)
        centred = mfcc - mean
        new_sums = sums[:, None] + tf.cumsum(centred, axis=1)  # [B, F, C]
        new_squares = squares[:, None] + tf.cumsum(tf.square(centred), axis=1)
        frames = tf.cast(tf.range(1, tf.shape(mfcc)[1] + 1), tf.float32)[None, :, None]
        seen = RUNNING_PRIOR_FRAMES + count[:, None] + frames  # [B, F, 1]
        running_mean = new_sums / seen
        running_var = tf.maximum((new_squares + RUNNING_PRIOR_FRAMES * tf.square(std)) / seen - tf.square(running_mean), 0.0)
        out = (centred - running_mean) / (tf.sqrt(running_var) + self.epsilon)
        return out, (new_sums[:, -1], new_squares[:, -1], count + tf.cast(tf.shape(mfcc)[1], tf.float32))

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
