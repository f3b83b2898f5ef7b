"""Real media files for tests, written with PyAV: each frame carries its own index so sampling is checkable."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# container suffix -> (video codec, pixel format, audio codec)
FORMATS = {
    ".mp4": ("libx264", "yuv420p", "aac"),
    ".avi": ("mjpeg", "yuvj420p", "mp3"),
    ".mkv": ("libx264", "yuv420p", "libopus"),
    ".webm": ("libvpx-vp9", "yuv420p", "libopus"),
}


def index_frame(i: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] whose brightness encodes the frame index (i * 8 mod 256) and a red left half."""
    frame = np.full((height, width, 3), (i * 8) % 256, dtype=np.uint8)
    frame[:, : width // 2, 0] = 255
    return frame


def write_video(path: str | Path, num_frames: int = 30, fps: int = 15, width: int = 96, height: int = 64,
                audio_seconds: float | None = None, sample_rate: int = 22050, codec: str | None = None,
                tone_hz: float = 440.0, frames: np.ndarray | None = None, sound: np.ndarray | None = None) -> Path:
    """Write a clip whose frame i has brightness i*8 (or `frames`, RGB uint8 [T, H, W, 3]); optional sine audio at tone_hz
    for audio_seconds (or `sound`, mono float32 samples at sample_rate)."""
    path = Path(path)
    if frames is not None:
        num_frames, height, width = frames.shape[:3]
    vcodec, pix_fmt, acodec = FORMATS[path.suffix]
    if codec:
        vcodec = codec
    with av.open(str(path), "w") as container:
        stream = container.add_stream(vcodec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if vcodec == "libx264":
            stream.options = {"crf": "10"}
        audio = None
        if sound is not None:
            audio_seconds = len(sound) / sample_rate
        if audio_seconds:
            audio = container.add_stream(acodec, rate=48000 if acodec == "libopus" else sample_rate)
            audio.layout = "mono"
        for i in range(num_frames):
            image = index_frame(i, width, height) if frames is None else frames[i]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            rate = audio.rate
            t = np.arange(int(audio_seconds * rate)) / rate
            samples = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32) if sound is None else \
                np.interp(t, np.arange(len(sound)) / sample_rate, sound).astype(np.float32)
            frame_size = audio.codec_context.frame_size or 1024
            for start in range(0, len(samples), frame_size):
                chunk = samples[start : start + frame_size]
                if len(chunk) < frame_size:
                    chunk = np.pad(chunk, (0, frame_size - len(chunk)))
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def strip_audio(source: str | Path, path: str | Path) -> Path:
    """A copy of a video file without its sound track: the video packets remuxed untouched (same frames)."""
    path = Path(path)
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        video = src.streams.video[0]
        out = dst.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return path


def write_ucf101_lists(root: Path, classes: list[str], train: list[str], test: list[str]) -> Path:
    """classInd.txt, trainlist01.txt and testlist01.txt of a UCF101-layout folder (clip paths relative to root)."""
    (root / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    (root / "trainlist01.txt").write_text("".join(f"{r} 1\n" for r in train))
    (root / "testlist01.txt").write_text("".join(f"{r}\n" for r in test))
    return root
