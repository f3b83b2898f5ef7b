"""Cheap checks of a media file's container: streams, duration, rate — no decoding.

Beyond the headers, the packets of a container's last second are read (not decoded), so a copy cut off
mid-stream (a download that stopped; the index at the front intact) is reported here, as a WAV whose data
chunk is shorter than its header says is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import soundfile

from pipeline.media import AUDIO_EXTENSIONS, MediaError, check_readable, soundfile_first
from pipeline.media.audio import check_wav_not_truncated


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
    if path.suffix.lower() in AUDIO_EXTENSIONS and soundfile_first(path):
        try:
            info = soundfile.info(str(path))
        except Exception:  # not a format libsndfile reads (AAC in .m4a, some MP3s): FFmpeg below decides
            info = None
        if info is not None:
            if info.frames == 0:
                raise MediaError("audio file has no samples")
            check_wav_not_truncated(info)
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
            _check_packets_present(container, [s for s in (video, audio) if s is not None])
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


def check_not_cut_short(path: str | Path) -> None:
    """Raise MediaError when a video or audio container ends well before its index says (see probe_media); a file
    FFmpeg cannot open is left to the decoder, which says why."""
    try:
        with av.open(str(path)) as container:
            streams = [s[0] for s in (container.streams.video, container.streams.audio) if s]
            _check_packets_present(container, streams)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        return


def _check_packets_present(container, streams) -> None:
    """Raise MediaError when a stream's packets end well before the duration the container's index declares (MP4,
    MOV and AVI say; MKV/WebM do not, and are not checked): a copy cut off mid-stream whose index survived.

    Seeks to the key frame before the last second and reads (does not decode) the packets from there, so the cost
    does not grow with the clip's length. A container that cannot seek is not checked."""
    for stream in streams:
        if not stream.frames or not stream.duration or not stream.time_base:
            continue
        start = stream.start_time or 0
        end = start + stream.duration
        try:
            container.seek(max(start, end - int(1 / stream.time_base)), stream=stream, backward=True)
            last, step = None, 0
            for packet in container.demux(stream):
                if packet.pts is not None:
                    step = packet.duration or step
                    last = max(last if last is not None else packet.pts, packet.pts + (packet.duration or 0))
        except av.FFmpegError:
            continue
        if last is None or last < end - max(step, stream.duration // 100):
            got = float(((last if last is not None else start) - start) * stream.time_base)
            raise MediaError(f"truncated file: the {stream.type} track ends at {got:.2f} s of the "
                             f"{float(stream.duration * stream.time_base):.2f} s its index lists (the file ends early)")
