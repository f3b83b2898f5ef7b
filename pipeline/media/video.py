"""Video decoding with OpenCV and frame sampling.

The decoder reads a clip once, front to back, and keeps only the frames it was asked
for, already resized: memory is O(T x S x S x 3), never the whole clip, and there are
no per-frame seeks (seeking in H.264 re-decodes from the previous key frame).

    path --read_clip--> SampledClip.frames: uint8 [V, T, S, S, 3] RGB, lengths: int32 [V]

V (views) = K temporal windows x C spatial crops; T frames per view; S the encoder's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from pipeline.media import MediaError, check_readable

SAMPLING_STRATEGIES = ("uniform", "segments", "multi_clip")
CROPS = ("center", "start", "end")  # start = left (landscape) / top (portrait)


@dataclass
class SampledClip:
    frames: np.ndarray  # uint8 [V, T, S, S, 3], RGB; frames past lengths[v] are zeros
    lengths: np.ndarray  # int32 [V]: valid frames per view (< T when the clip is shorter than T)
    fps: float  # the container's frame rate
    total_frames: int  # frames in the clip (as reported, or counted when the report was wrong)


def sample_frame_indices(
    total: int,
    num_frames: int,
    strategy: str = "uniform",
    num_clips: int = 1,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Which frames to keep: one sorted int array (length <= num_frames) per temporal view.

    uniform     T frames spread evenly over the clip (segment centres).
    segments    TSN: the clip is cut into T segments; training takes a random frame of each,
                evaluation the centre (= uniform).
    multi_clip  K half-overlapping windows tiling the clip, T frames spread over each;
                the views are averaged at test time.
    A clip with fewer than T frames yields all its frames (the caller pads and masks).
    """
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {SAMPLING_STRATEGIES}")
    if total <= 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(num_clips if strategy == "multi_clip" else 1)]
    if strategy == "multi_clip":
        # K windows of length 2n/(K+1) starting every n/(K+1): together they tile [0, n) with 50% overlap.
        span = total if num_clips == 1 else max(min(total, num_frames), round(2 * total / (num_clips + 1)))
        starts = np.linspace(0, total - span, num_clips).round().astype(np.int64)
        return [start + _spread(span, num_frames) for start in starts]
    if strategy == "segments" and train and total >= num_frames:
        rng = rng or np.random.default_rng()
        edges = np.linspace(0, total, num_frames + 1)
        lo, hi = np.floor(edges[:-1]).astype(np.int64), np.maximum(np.floor(edges[1:]).astype(np.int64), np.floor(edges[:-1]).astype(np.int64) + 1)
        return [np.minimum(rng.integers(lo, hi), total - 1)]
    return [_spread(total, num_frames)]


def _spread(total: int, num_frames: int) -> np.ndarray:
    """Centres of num_frames equal segments of [0, total); all frames when total < num_frames."""
    if total <= num_frames:
        return np.arange(total, dtype=np.int64)
    return np.floor((np.arange(num_frames) + 0.5) * total / num_frames).astype(np.int64)


def resize_and_crop(frame: np.ndarray, size: int, crop: str = "center") -> np.ndarray:
    """Aspect-preserving resize (shorter side = size) then a size x size crop.

    frame: uint8 [H, W, 3] -> uint8 [size, size, 3]
    """
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    # INTER_AREA averages source pixels when shrinking (no aliasing); bilinear when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    offsets = {"center": ((new_h - size) // 2, (new_w - size) // 2), "start": (0, 0), "end": (new_h - size, new_w - size)}
    if crop not in offsets:
        raise ValueError(f"unknown crop {crop!r}; expected one of {CROPS}")
    top, left = offsets[crop]
    return resized[top : top + size, left : left + size]


def _open(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    check_readable(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        if _holds_only_audio(path):
            raise MediaError("no video stream: the file holds only audio")
        raise MediaError("cannot open as video (corrupt, truncated or not a video)")
    return cap


def _holds_only_audio(path: Path) -> bool:
    """True when FFmpeg opens the file and finds audio but no video (a WAV named .mp4, a soundtrack-only MP4)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio) and not container.streams.video
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        return False


def _decode_selected(path: str | Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int, float]:
    """One sequential pass: {frame index: BGR frame} for the wanted indices, frames decoded, fps.

    Decoding stops after the last wanted frame; with nothing wanted it runs to the end (a count).
    """
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        kept: dict[int, np.ndarray] = {}
        index = 0
        last_wanted = max(wanted) if wanted else -1
        while True:
            # grab() decodes without converting to BGR; retrieve() converts only frames we keep.
            if not cap.grab():
                break
            if index in wanted:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    kept[index] = frame
            index += 1
            if index > last_wanted >= 0:  # nothing more to keep: stop decoding
                break
        return kept, index, fps
    finally:
        cap.release()


def _reported_count(cap: cv2.VideoCapture) -> int:
    return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def count_frames(path: str | Path) -> tuple[int, float]:
    """(frame count the container reports, fps); the count may be approximate (MKV/WebM) or wrong (truncated)."""
    cap = _open(path)
    try:
        return _reported_count(cap), float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()


def read_clip(
    path: str | Path,
    num_frames: int,
    size: int,
    strategy: str = "uniform",
    num_clips: int = 1,
    crops: Sequence[str] = ("center",),
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> SampledClip:
    """Decode a clip once and return its sampled, resized, RGB frames for every view.

    Indices are planned from the frame count the container reports. When the stream ends
    early (truncated file, approximate count) the plan is redone with the true count and
    the clip decoded a second time, so sampling always spans the frames that exist.
    Raises MediaError when the file cannot be opened or yields no frames.
    """
    reported, _ = count_frames(path)
    for attempt in range(2):
        plan = sample_frame_indices(reported, num_frames, strategy, num_clips, train, rng)
        wanted = set(np.concatenate(plan).tolist()) if reported > 0 else set()
        if not wanted:  # unknown length: count by decoding (no frames kept), then plan again
            _, reported, _ = _decode_selected(path, set())
            if reported == 0:
                raise MediaError("video has no decodable frames")
            continue
        kept, decoded, fps = _decode_selected(path, wanted)
        if decoded == 0:
            raise MediaError("video has no decodable frames")
        if all(i in kept for i in wanted) or attempt == 1:
            break
        reported = decoded  # the stream ended before the planned frames: plan over what exists
    else:  # pragma: no cover - the loop always breaks on its second attempt
        raise MediaError("video has no decodable frames")

    views = [(indices, crop) for indices in plan for crop in crops]
    frames = np.zeros((len(views), num_frames, size, size, 3), dtype=np.uint8)
    lengths = np.zeros(len(views), dtype=np.int32)
    for v, (indices, crop) in enumerate(views):
        present = [i for i in indices.tolist() if i in kept]
        for t, i in enumerate(present):
            frames[v, t] = cv2.cvtColor(resize_and_crop(kept[i], size, crop), cv2.COLOR_BGR2RGB)
        lengths[v] = len(present)
    if lengths.min() == 0:
        raise MediaError("video has no decodable frames")
    return SampledClip(frames=frames, lengths=lengths, fps=fps, total_frames=max(reported, decoded))


def stream_frames(
    path: str | Path, size: int | None, every: int = 1, keep: Callable[[int], bool] | None = None, rate: float | None = None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Stream (frame index, time in s, RGB uint8 [size, size, 3]) for every `every`-th frame (size None: [H, W, 3] as decoded).

    keep: instead of `every`, called once per decoded frame index, in order; only the frames it
    accepts are converted, resized and yielded (the others cost a grab only).
    rate: instead of both, `rate` frames per second: the first frame at or after each multiple of 1 / rate seconds
    (a video of a lower frame rate gives each of its frames once).
    For long videos: memory stays flat whatever the length.
    """
    keep = keep or (lambda index: index % every == 0)
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
        if rate is not None:
            keep = _at_rate(fps, rate)
        index = 0
        while cap.grab():
            if keep(index):
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    yield index, index / fps, cv2.cvtColor(frame if size is None else resize_and_crop(frame, size), cv2.COLOR_BGR2RGB)
            index += 1
        if index == 0:
            raise MediaError("video has no decodable frames")
    finally:
        cap.release()


def _at_rate(fps: float, rate: float) -> Callable[[int], bool]:
    """keep(index) for stream_frames: True for the first frame at or after each multiple of 1 / rate seconds."""
    due = 0  # the next multiple of 1 / rate, counted in steps

    def keep(index: int) -> bool:
        nonlocal due
        if index / fps * rate + 1e-6 < due:
            return False
        due = math.floor(index / fps * rate + 1e-6) + 1
        return True

    return keep


def frame_times(indices: np.ndarray, fps: float) -> np.ndarray:
    """Seconds of each frame index (fps 0 -> assume 25)."""
    return indices / (fps if fps > 0 and math.isfinite(fps) else 25.0)
