"""Audio loading: sound files and the audio tracks of video containers, as mono float32 at one rate.

Nothing here knows about Keras or TensorFlow: files in, numpy arrays out.

    waveform = load_audio("clip.mp4", sample_rate=16000)     # float32 [N] in [-1, 1]
    window, valid = fit_length(waveform, 4 * 16000)          # float32 [64000], true length

Sound files (WAV/FLAC/OGG/MP3) are read with soundfile (libsndfile); anything
libsndfile cannot read, and every video container (MP4/AVI/MKV/WebM/...), is
decoded with PyAV (FFmpeg). Resampling is soxr's "HQ" recipe through
`librosa.resample(res_type="soxr_hq")`: deterministic, and the same resampler
librosa itself uses by default, so features computed here match librosa's.

Every failure a user can cause (missing, empty, truncated or non-media file, a
video without sound) raises `MediaError` with a one-line reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.media import AUDIO_EXTENSIONS, MediaError, check_readable, soundfile_first

RESAMPLE_METHOD = "soxr_hq"
# load_audio's reasons for a video whose sound is absent rather than damaged: audio-visual runs go on without it
ABSENT_AUDIO = ("no audio track", "audio has no samples", "audio track has no samples")
NO_AUDIO_WARNING = "no audio track: classified from video only"


def load_audio(path: str | Path, sample_rate: int, absent_ok: bool = False) -> np.ndarray:
    """Decode a sound file or a video's audio track to mono at `sample_rate`.

    Args:
        path: a sound file (.wav/.flac/.ogg/.mp3) or a video container (.mp4/.avi/.mkv/.webm/...).
        sample_rate: output rate in Hz.
        absent_ok: a file whose sound is absent (no audio track, or one without samples) gives float32 [0]
            instead of raising: audio-visual runs classify such a video from its frames. A damaged file still raises.

    Returns:
        waveform: float32 [N], mono (channels averaged), clipped to [-1, 1].

    Raises:
        MediaError: the file is missing, empty, not decodable, truncated, or a video has no audio track.
    """
    try:
        return _decode_audio(Path(path), sample_rate)
    except MediaError as e:
        if absent_ok and str(e) in ABSENT_AUDIO:
            return np.zeros(0, np.float32)
        raise


def _decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    """load_audio without the absent_ok switch."""
    check_readable(path)

    is_audio_file = path.suffix.lower() in AUDIO_EXTENSIONS
    if is_audio_file and soundfile_first(path):
        try:
            samples, rate = _read_soundfile(path)
        except MediaError:
            raise
        except Exception:
            # libsndfile does not read every codec (e.g. some MP3s, or a WAV with an exotic
            # encoding); FFmpeg reads almost anything, and gives the final verdict.
            samples, rate = _read_with_pyav(path, is_audio_file=True)
    else:  # a video container, or a file named like audio whose first bytes are no container libsndfile knows
        samples, rate = _read_with_pyav(path, is_audio_file=is_audio_file)

    if samples.size == 0:
        raise MediaError("audio has no samples")
    check_finite(samples)  # before the clip below, which would turn inf into full scale without a word
    waveform = resample(samples, rate, sample_rate)
    # Float sources and resampling ringing can leave samples slightly outside [-1, 1].
    return np.clip(waveform, -1.0, 1.0).astype(np.float32, copy=False)


def stream_audio(path: str | Path, sample_rate: int, block_seconds: float = 0.5):
    """Decode a sound file or a video's audio track block by block, as a stream: memory stays flat for any length.

    Yields float32 [n] mono blocks at `sample_rate` (about block_seconds each, the last one shorter), clipped to
    [-1, 1]. Decoding and rate conversion are FFmpeg's (PyAV), on the fly: a file's samples can differ slightly
    from `load_audio`'s soxr resampling when its rate is not sample_rate. Raises MediaError as load_audio does.
    """
    import av

    path = Path(path)
    check_readable(path)
    if path.suffix.lower() == ".wav":  # FFmpeg, like libsndfile, reads a cut-off WAV as far as it goes, silently
        import soundfile

        try:
            info = soundfile.info(str(path))
        except RuntimeError:  # not a WAV libsndfile reads: FFmpeg decides below
            info = None
        if info is not None:
            check_wav_not_truncated(info)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise MediaError(f"cannot open as media ({_one_line(e)})") from None
    block = max(1, round(block_seconds * sample_rate))
    with container:
        if not container.streams.audio:
            raise MediaError("no audio track")
        # our own channel mean, as load_audio does; FFmpeg converts the rate
        converter = av.AudioResampler(format="fltp", rate=sample_rate)
        pending: list[np.ndarray] = []
        size = 0
        try:
            for frame in container.decode(container.streams.audio[0]):
                for converted in converter.resample(frame):
                    pending.append(converted.to_ndarray().mean(axis=0, dtype=np.float32))
                    size += pending[-1].size
                if size >= block:
                    samples = np.concatenate(pending)
                    check_finite(samples)
                    yield np.clip(samples, -1.0, 1.0)
                    pending, size = [], 0
            pending += [c.to_ndarray().mean(axis=0, dtype=np.float32) for c in converter.resample(None)]
        except (av.FFmpegError, ValueError) as e:
            raise MediaError(f"audio track is truncated or corrupt ({_one_line(e)})") from None
    if pending:
        samples = np.concatenate(pending)
        check_finite(samples)
        yield np.clip(samples, -1.0, 1.0)


def check_finite(waveform: np.ndarray) -> None:
    """Raise MediaError when a waveform holds NaN or inf samples (a float WAV can; MFCCs of them are NaN)."""
    bad = int(waveform.size - np.count_nonzero(np.isfinite(waveform)))
    if bad:
        raise MediaError(f"audio has {bad} non-finite samples (NaN or inf)")


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """waveform: float32 [N] at orig_rate -> float32 [round(N * target / orig)] at target_rate (soxr HQ)."""
    if int(orig_rate) == int(target_rate):
        return waveform.astype(np.float32, copy=False)
    import librosa  # lazily: only needed when the rates differ

    out = librosa.resample(waveform, orig_sr=int(orig_rate), target_sr=int(target_rate), res_type=RESAMPLE_METHOD)
    return out.astype(np.float32, copy=False)


def fit_length(waveform: np.ndarray, num_samples: int) -> tuple[np.ndarray, int]:
    """Centre-crop or zero-pad (at the end) a waveform to exactly `num_samples`.

    Args:
        waveform: float32 [N].
        num_samples: the fixed window length.

    Returns:
        (window: float32 [num_samples], valid_samples): valid_samples = min(N, num_samples) is the
        number of real (non-padding) samples, so the model can mask the padded frames.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    n = waveform.shape[0]
    if n >= num_samples:
        # Centre crop: a spoken command or an action's sound is usually in the middle of a clip.
        start = (n - num_samples) // 2
        return waveform[start : start + num_samples].copy(), num_samples
    # Zero padding at the end keeps the real audio at t=0, so valid frames are a prefix
    # (what a mask over the first `valid` frames expects).
    out = np.zeros(num_samples, dtype=np.float32)
    out[:n] = waveform
    return out, n


# ----------------------------------------------------------------------------- decoders


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 [N], native rate) read by libsndfile."""
    import soundfile

    check_wav_not_truncated(soundfile.info(str(path)))
    # always_2d: [N, channels] whatever the file has, so the downmix below is one line.
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1, dtype=np.float32), int(rate)


# libsndfile's WAV report says e.g. "data : 100000 (should be 49978)" when the file ends early.
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming writers put in the header when they do not know the length yet.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def check_wav_not_truncated(info) -> None:
    """Raise MediaError if a WAV's data chunk is shorter than its header declares (a cut-off copy).

    libsndfile silently reads the samples that are present; a clip cut in half would then be
    used as if it were whole.
    """
    match = _WAV_DATA_SIZE.search(getattr(info, "extra_info", "") or "")
    if match:
        declared, present = int(match.group(1)), int(match.group(2))
        if declared not in _UNKNOWN_SIZES and present + 1 < declared:
            raise MediaError(f"truncated file: WAV data is {present} bytes, header says {declared}")


def _read_with_pyav(path: Path, is_audio_file: bool) -> tuple[np.ndarray, int]:
    """(mono float32 [N], native rate) of the first audio stream, decoded by FFmpeg."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        kind = "audio" if is_audio_file else "media"
        raise MediaError(f"cannot open as {kind} ({_one_line(e)})") from None

    with container:
        if not container.streams.audio:
            raise MediaError("no audio track")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        # Convert every decoded frame to planar float32 at its own rate and layout; the downmix is
        # ours (a plain channel mean, as librosa and soundfile paths do) rather than FFmpeg's
        # mixing matrix, so a stereo WAV and the same audio in an MP4 give the same mono signal.
        converter = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for converted in converter.resample(frame):
                    chunks.append(converted.to_ndarray().mean(axis=0, dtype=np.float32))
            for converted in converter.resample(None):
                chunks.append(converted.to_ndarray().mean(axis=0, dtype=np.float32))
        except (av.FFmpegError, ValueError) as e:
            raise MediaError(f"audio track is truncated or corrupt ({_one_line(e)})") from None
        if not rate:
            raise MediaError("audio track has no sample rate")
        declared = _declared_samples(stream, rate)
    if not chunks:
        raise MediaError("audio track has no samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    if declared and samples.shape[0] < declared - max(2048, declared // 100):
        # The index promises more than the file holds: a copy cut off mid-stream.
        raise MediaError(f"truncated file: audio track decodes to {samples.shape[0] / rate:.2f} s of {declared / rate:.2f} s")
    if declared and samples.shape[0] > declared:
        # AAC decodes in whole 1024-sample frames: the last one carries encoder padding past the
        # end of the real sound (up to ~23 ms at 44.1 kHz). The MP4 edit list records the true
        # duration; trim to it so an MP4's audio has the length of its source.
        samples = samples[:declared]
    return samples, int(rate)


def _declared_samples(stream, rate: int) -> int:
    """Samples the container says the stream holds (0 when it does not say)."""
    if not stream.duration or not stream.time_base:
        return 0
    return int(round(float(stream.duration * stream.time_base) * rate))


def _one_line(error: Exception) -> str:
    """'ErrorType: first line of the message', at most 120 characters of it."""
    # FFmpeg errors carry the message without the errno and file name that str() adds.
    text = str(getattr(error, "strerror", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120] if text else ''}".rstrip(": ")
