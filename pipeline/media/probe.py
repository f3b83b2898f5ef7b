"""Cheap checks of a media file's container: streams, duration, rate — no full decode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import soundfile

from pipeline.media import check_readable, AUDIO_EXTENSIONS, MediaError


@dataclass(frozen=True)
class MediaInfo:
    has_video: bool
    has_audio: bool
    duration: float  # seconds (0 when the container does not say)
    fps: float = 0.0
    width: int = 0
    height: int = 0
    sample_rate: int = 0


def probe_media(path: str | Path) -> MediaInfo:
    """Open the container and read its stream headers; raise MediaError with the reason if unusable."""
    path = Path(path)
    check_readable(path)
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        try:
            info = soundfile.info(str(path))
        except Exception:  # not a format libsndfile reads (AAC in .m4a, some MP3s): FFmpeg below decides
            info = None
        if info is not None:
            if info.frames == 0:
                raise MediaError("audio file has no samples")
            return MediaInfo(False, True, info.frames / info.samplerate, sample_rate=info.samplerate)
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            duration = container.duration / 1e6 if container.duration else 0.0
            if video is None and audio is None:
                raise MediaError("no video or audio stream")
            if video is not None and (video.frames == 0 and duration == 0):
                raise MediaError("video stream has no frames")
            return MediaInfo(
                has_video=video is not None,
                has_audio=audio is not None,
                duration=duration,
                fps=float(video.average_rate or 0) if video is not None else 0.0,
                width=video.codec_context.width if video is not None else 0,
                height=video.codec_context.height if video is not None else 0,
                sample_rate=audio.codec_context.sample_rate if audio is not None else 0,
            )
    except MediaError:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        detail = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise MediaError(f"cannot open as media ({detail}; corrupt, truncated or not a media file)") from None
