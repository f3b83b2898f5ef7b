"""One media file -> the arrays a run's model reads: the same function for preprocessing, evaluation,
prediction and export parity.

    clip.mp4 --read_clip (OpenCV: sample T frames, resize short side, crop S x S)--> frames uint8 [V, T, S, S, 3],
                                                                                  frame_lengths int32 [V]
             --load_audio (mono, resampled to sample_rate)--> waveform float32 [n]
             --audio_arrays: fit_length (centre crop / zero pad to N samples), librosa_mfcc--> mfcc float32 [F, C],
                                                                                  mfcc_length int
    (runs whose model computes MFCCs in-graph also keep waveform float32 [N] and num_samples int)

V is the number of views (1, or num_clips windows x crops when testing with several). No Keras here:
this runs in preprocessing's worker processes, which must not import TensorFlow.

An audio-visual run tolerates a video without a sound track: its audio arrays are those of silence with
zero valid length (mfcc_length = num_samples = 0), which the fusion model reads as "audio absent", and
the result carries `warning` (media.audio.NO_AUDIO_WARNING) for the caller to print. `without_modality` makes the
same arrays on purpose (`actrec evaluate --drop`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.features.records import MODALITY_FEATURES
from pipeline.media import MediaError


def clip_seed(seed: int, clip_id: str) -> int:
    """A per-clip seed independent of processing order (for TSN segment sampling)."""
    return zlib.crc32(f"{seed}:{clip_id}".encode())


def decode_clip(path: str | Path, cfg: Config, crops: Sequence[str] = ("center",), train: bool = False,
                clip_id: str | None = None, start: float | None = None) -> dict:
    """Decode one file into arrays (no encoder).

    Returns {'frames': uint8 [V, T, S, S, 3], 'frame_lengths': int32 [V]} for video and
    {'mfcc': float32 [F, C], 'mfcc_length': int, 'waveform'?: float32 [N], 'num_samples'?: int} for audio,
    plus 'warning': media.audio.NO_AUDIO_WARNING when an audio-visual run got a video without sound (audio lengths 0).
    train: random (seeded) segment sampling, as for training clips. clip_id (default: the file name)
    seeds that sampling, so a clip gets the same frames whichever process decodes it. start (seconds, audio
    only): the clip is the audio_seconds window of a longer recording that begins there (a _silence_ cut).
    Raises MediaError with the reason when the file cannot be used.
    """
    from pipeline.media.audio import NO_AUDIO_WARNING, load_audio
    from pipeline.media.video import read_clip

    p = cfg.preprocess
    path = Path(path)
    out: dict = {}
    if "video" in p.modalities:
        rng = np.random.default_rng(clip_seed(cfg.seed, clip_id or path.name))
        clip = read_clip(path, p.num_frames, p.image_size, p.sampling, p.num_clips, crops, train=train, rng=rng)
        out["frames"], out["frame_lengths"] = clip.frames, clip.lengths
    if "audio" in p.modalities:
        waveform = load_audio(path, p.sample_rate, absent_ok="video" in p.modalities)
        if waveform.size == 0:
            return {**out, **silent_audio_arrays(cfg), "warning": NO_AUDIO_WARNING}
        if start is not None:
            first = round(start * p.sample_rate)
            waveform = waveform[first:first + round(p.audio_seconds * p.sample_rate)]
        out.update(audio_arrays(waveform, cfg))
    return out


def silent_audio_arrays(cfg: Config) -> dict:
    """audio_arrays for a clip with no sound: the MFCCs of silence, zero valid frames and samples."""
    p = cfg.preprocess
    out = audio_arrays(np.zeros(round(p.audio_seconds * p.sample_rate), np.float32), cfg)
    out["mfcc_length"] = 0
    if "num_samples" in out:
        out["num_samples"] = 0
    return out


def without_modality(arrays: dict, modality: str, cfg: Config) -> dict:
    """decode_clip arrays with one modality removed, as if the clip lacked it: zero frames and frame_lengths
    (video), or silence with zero valid length (audio). The model's fusion gates it out (`evaluate --drop`)."""
    if modality not in MODALITY_FEATURES:
        raise ValueError(f"modality must be one of {', '.join(MODALITY_FEATURES)}; got {modality!r}")
    out = dict(arrays)
    if modality == "audio":
        return {**out, **{k: v for k, v in silent_audio_arrays(cfg).items() if k in out}}
    for name in MODALITY_FEATURES["video"]:
        if name in out:
            out[name] = np.zeros_like(out[name])
    return out


def audio_arrays(waveform: np.ndarray, cfg: Config) -> dict:
    """The audio part of decode_clip, for a whole clip or one window of a long recording.

    waveform: float32 [n] mono at preprocess.sample_rate -> {'mfcc': float32 [F, C], 'mfcc_length': int,
    'waveform'?: float32 [N], 'num_samples'?: int}, N = audio_seconds x sample_rate (centre crop or zero padding).
    """
    from pipeline.features.mfcc import MFCCParams, librosa_mfcc
    from pipeline.media.audio import check_finite, fit_length

    p = cfg.preprocess
    if waveform.size == 0:
        raise MediaError("audio track is empty")
    check_finite(waveform)
    params = MFCCParams.from_config(p)
    waveform, valid = fit_length(waveform, round(p.audio_seconds * p.sample_rate))
    out = {"mfcc": librosa_mfcc(waveform, params).astype(np.float32)}
    out["mfcc_length"] = min(len(out["mfcc"]), params.num_frames(valid))
    if p.keeps_waveform:  # an in-graph MFCC model reads it; training augments it
        out["waveform"], out["num_samples"] = waveform.astype(np.float32), valid
    return out
