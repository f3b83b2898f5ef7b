"""MFCCs: the librosa reference, and a Keras layer computing the same numbers in-graph.

Preprocessing computes MFCCs with librosa (`librosa_mfcc`); an exported model that
takes a raw waveform computes them with the `MFCC` layer, built from TensorFlow ops
that the TFLite converter maps to builtins (no Flex ops). Both follow one recipe:

    waveform float32 [N]
      -> zero-pad n_fft // 2 on both sides             (librosa center=True, pad_mode="constant")
      -> frames [F, n_fft], F = 1 + N // hop             (even n_fft)
      -> periodic Hann window, real FFT, |.|^2           power spectrum [F, n_fft // 2 + 1]
                                                         (the layer: float32 FFTs made accurate, see MFCC._power_spectrum)
      -> Slaney mel filterbank (librosa.filters.mel)     [F, n_mels]
      -> 10 log10(max(x, 1e-10)), floored at max - 80 dB (librosa.power_to_db, ref=1, top_db=80)
      -> orthonormal DCT-II, first n_mfcc coefficients   [F, n_mfcc]
      -> optionally + delta and delta-delta              [F, 3 n_mfcc] (librosa.feature.delta, width 9)

Features are time-major ([F, C]), the layout the RNN heads read.

framing="causal" (what a streaming model needs) changes two steps, so that each frame depends on
its own n_fft samples and nothing later or elsewhere in the utterance:

    waveform float32 [N]
      -> zero-pad n_fft - hop on the left only           frame t ends at sample (t + 1) * hop
      -> frames [F, n_fft], F = N // hop                  (librosa center=False on the padded signal)
      -> ... as above ...
      -> 10 log10(max(x, 1e-10)), no per-utterance floor  (librosa.power_to_db, ref=1, top_db=None)

A stream then computes the newest frame from the newest hop and the n_fft - hop samples before it
(zeros at the start, as the padding), and the frames of a streamed utterance equal the frames of
the whole utterance.

Zero padding (not librosa's former "reflect" default) is chosen on purpose: audio that
`fit_length` pads with zeros then gives exactly the frames of the unpadded audio for the
first `params.num_frames(valid_samples)` frames, so masking the rest loses nothing.

Normalisation (`normalize_mfcc` in numpy for preprocessing, `mfcc_layers.MFCCNormalization` in a model)
is per utterance (zero mean, unit variance per coefficient), with training-set statistics, or `running`: each
frame with the mean and variance of the frames up to it, which start from the training-set statistics (worth
RUNNING_PRIOR_FRAMES frames) and move towards the utterance's own. Running is causal, so a stream computes it
frame by frame, and it removes a recording's level and channel as per-utterance statistics do:

    x' = x - mu (training mean)    S_t = sum_{s<=t} x'_s    Q_t = sum_{s<=t} x'_s^2 + P sigma^2    n_t = t + 1
    mean_t = S_t / (P + n_t)       var_t = Q_t / (P + n_t) - mean_t^2       out_t = (x'_t - mean_t) / (sqrt(var_t) + eps)

The Keras layers (`MFCC`, `MFCCNormalization`) and `tfio_load_audio` (WAVs read and resampled
in tf.data) live in mfcc_layers.py, so that worker processes computing MFCCs with librosa never
import TensorFlow (seconds per process).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

# power_to_db constants (librosa's defaults): floor of the power before the log, and the
# dynamic range kept below each utterance's loudest bin.
AMIN = 1e-10
TOP_DB = 80.0
# librosa.feature.delta's default window: 9 frames (4 each side).
DELTA_WIDTH = 9
# Added to the standard deviation before dividing, so a constant coefficient (digital
# silence) normalises to 0 instead of NaN. Negligible against MFCC spreads of ~1-100 dB.
NORM_EPSILON = 1e-5
NORMALIZE_MODES = ("utterance", "dataset", "running", "none")
# `running` normalisation: the training-set statistics count as this many frames (0.25 s at 10 ms hops) before
# the utterance's own frames outweigh them.
RUNNING_PRIOR_FRAMES = 25
FRAMINGS = ("centred", "causal")


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
    framing: str = "centred"  # "causal": left padding only and no per-utterance floor (see the module docstring)

    @classmethod
    def from_config(cls, preprocess_cfg) -> "MFCCParams":
        """The MFCC fields of a `PreprocessConfig` (or any object with the same attributes; `framing` is its mfcc_framing)."""
        names = {f.name: "mfcc_framing" if f.name == "framing" else f.name for f in dataclasses.fields(cls)}
        return cls(**{field: getattr(preprocess_cfg, name) for field, name in names.items() if hasattr(preprocess_cfg, name)})

    @property
    def fmax_hz(self) -> float:
        return float(self.fmax) if self.fmax is not None else self.sample_rate / 2.0

    @property
    def feature_dim(self) -> int:
        """C: coefficients per frame (n_mfcc, tripled with deltas)."""
        return self.n_mfcc * (3 if self.deltas else 1)

    @property
    def causal(self) -> bool:
        return self.framing == "causal"

    @property
    def padding(self) -> tuple[int, int]:
        """Zeros added (before, after) the waveform before framing."""
        return (self.n_fft - self.hop_length, 0) if self.causal else (self.n_fft // 2, self.n_fft // 2)

    @property
    def frame_offset(self) -> int:
        """Samples added to N before the floor division: F = 1 + (N + frame_offset) // hop."""
        return sum(self.padding) - self.n_fft

    def num_frames(self, num_samples: int) -> int:
        """F for a waveform of num_samples: 1 + N // hop (centred, even n_fft), N // hop (causal); 0 for no samples."""
        return max(1 + (num_samples + self.frame_offset) // self.hop_length, 0) if num_samples > 0 else 0

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


def hann_window(n_fft: int, dtype=np.float32) -> np.ndarray:
    """[n_fft] of dtype: the periodic Hann window librosa's STFT uses (scipy get_window fftbins=True)."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(dtype)


# ----------------------------------------------------------------------------- the reference


def librosa_mfcc(waveform: np.ndarray, params: MFCCParams) -> np.ndarray:
    """The reference MFCC, computed by librosa.

    Args:
        waveform: float32 [N] at params.sample_rate.
        params: MFCC settings.

    Returns:
        mfcc: float32 [F, C], F = params.num_frames(N), C = params.feature_dim
        (coefficients, then deltas, then delta-deltas when params.deltas), computed in float64
        (with librosa's float32 mel filterbank, the `mel_matrix` the layer uses).
    """
    import librosa

    # float64 all the way (librosa follows its input's dtype): in float32 its log/DCT steps alone
    # are off by up to ~7e-5 on MFCCs of ~500, as much as the in-model layer's whole error budget.
    waveform = np.asarray(waveform, dtype=np.float64)
    if params.causal:
        mfcc = _causal_mfcc(waveform, params)
    else:
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
        check_delta_frames(mfcc.shape[1])
        d1 = librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=1, mode="interp")
        d2 = librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=2, mode="interp")
        mfcc = np.concatenate([mfcc, d1, d2], axis=0)
    return np.ascontiguousarray(mfcc.T.astype(np.float32))


def _causal_mfcc(waveform: np.ndarray, params: MFCCParams) -> np.ndarray:
    """float64 [N] -> [n_mfcc, N // hop]: left-padded frames, no per-utterance floor (framing="causal")."""
    import librosa

    padded = np.pad(waveform, params.padding)
    mel = librosa.feature.melspectrogram(
        y=padded, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length, window="hann",
        center=False, power=2.0, n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax_hz, htk=False,
    )
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=AMIN, top_db=None)
    return librosa.feature.mfcc(S=log_mel, n_mfcc=params.n_mfcc, dct_type=2, norm="ortho", lifter=0)


def check_delta_frames(num_frames: int) -> None:
    if num_frames < DELTA_WIDTH:
        raise ValueError(
            f"MFCC deltas need at least {DELTA_WIDTH} frames; got {num_frames} "
            "(use a longer audio window or deltas: false)"
        )


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
        mode: "utterance" (this sequence's mean/std over its valid frames), "dataset" (`stats`), "running"
            (each frame's own causal statistics, from `stats`: the module docstring) or "none".
        stats: (mean float [C], std float [C]) from `dataset_stats`, for modes "dataset" and "running".

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
    elif mode in ("dataset", "running"):
        if stats is None:
            raise ValueError(f"normalize mode {mode!r} needs stats=(mean, std) from the training set")
        mean, std = (np.asarray(s, dtype=np.float64) for s in stats)
        if mode == "dataset":
            out = ((mfcc - mean) / (std + NORM_EPSILON)).astype(np.float32)
        else:  # the module docstring's formula, frame by frame
            centred = mfcc.astype(np.float64) - mean
            seen = RUNNING_PRIOR_FRAMES + np.arange(1, len(mfcc) + 1)[:, None]
            running_mean = np.cumsum(centred, axis=0) / seen
            running_var = np.maximum((np.cumsum(centred**2, axis=0) + RUNNING_PRIOR_FRAMES * std**2) / seen - running_mean**2, 0.0)
            out = ((centred - running_mean) / (np.sqrt(running_var) + NORM_EPSILON)).astype(np.float32)
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
