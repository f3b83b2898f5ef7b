"""Video decoding and frame sampling on real files in every container the product supports."""

import numpy as np
import pytest

from pipeline.media import MediaError
from pipeline.media.video import read_clip, resize_and_crop, sample_frame_indices, stream_frames
from tests.media_factory import write_video


def brightness_index(frames):
    """Recover each frame's index from its brightness (right half, green channel: i*8)."""
    return np.round(frames[..., frames.shape[-2] // 2 :, 1].mean(axis=(-1, -2)) / 8).astype(int)


@pytest.mark.parametrize("suffix, codec", [(".mp4", None), (".avi", None), (".mkv", None), (".webm", "libvpx"), (".webm", "libvpx-vp9")])
def test_read_clip_every_container(tmp_path, suffix, codec):
    """MP4/H.264, AVI/MJPEG, MKV/H.264, WebM/VP8 and WebM/VP9."""
    path = write_video(tmp_path / f"clip{suffix}", num_frames=30, fps=15, codec=codec)
    clip = read_clip(path, num_frames=5, size=32)
    assert clip.frames.shape == (1, 5, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.lengths.tolist() == [5]
    assert clip.fps == pytest.approx(15, rel=0.05)
    # uniform sampling = centres of 5 segments of 30 frames: 3, 9, 15, 21, 27
    assert np.abs(brightness_index(clip.frames[0]) - [3, 9, 15, 21, 27]).max() <= 1
    # BGR -> RGB: the left half is red
    assert clip.frames[0, 0, :, :10, 0].mean() > 200 and clip.frames[0, 0, :, :10, 2].mean() < 60


def test_short_clip_is_padded_with_true_length(tmp_path):
    path = write_video(tmp_path / "short.mp4", num_frames=4)
    clip = read_clip(path, num_frames=8, size=16)
    assert clip.lengths.tolist() == [4]
    assert clip.frames[0, 4:].max() == 0 and clip.frames[0, :4].max() > 0
    assert brightness_index(clip.frames[0, :4]).tolist() == [0, 1, 2, 3]


def test_sampling_strategies():
    assert [v.tolist() for v in sample_frame_indices(100, 4)] == [[12, 37, 62, 87]]
    # segments: random frame inside each segment when training, centre at evaluation
    rng = np.random.default_rng(0)
    (idx,) = sample_frame_indices(100, 4, "segments", train=True, rng=rng)
    assert all(25 * k <= i < 25 * (k + 1) for k, i in enumerate(idx))
    assert sample_frame_indices(100, 4, "segments", train=False)[0].tolist() == [12, 37, 62, 87]
    # multi_clip: K half-overlapping windows tiling the clip
    views = sample_frame_indices(100, 4, "multi_clip", num_clips=3)
    assert len(views) == 3 and views[0][0] < views[1][0] < views[2][0]
    assert views[0].min() >= 0 and views[-1].max() <= 99 and views[-1].max() > 90
    assert sample_frame_indices(3, 8)[0].tolist() == [0, 1, 2]


def test_multi_clip_views_and_crops(tmp_path):
    path = write_video(tmp_path / "clip.mp4", num_frames=40, width=192, height=64)
    clip = read_clip(path, num_frames=4, size=32, strategy="multi_clip", num_clips=2, crops=("start", "center", "end"))
    assert clip.frames.shape == (6, 4, 32, 32, 3)
    # the left crop sees the red half only, the right crop the grey half only
    right = clip.frames[2, 0].astype(int)
    assert clip.frames[0, 0, ..., 0].mean() > 250 and np.abs(right[..., 0] - right[..., 1]).mean() < 5
    first, second = brightness_index(clip.frames[1]), brightness_index(clip.frames[4])
    assert first[0] < second[0]


def test_resize_preserves_aspect():
    frame = np.zeros((60, 120, 3), np.uint8)
    frame[:, 55:65] = 255  # a vertical bar in the centre
    out = resize_and_crop(frame, 30)
    assert out.shape == (30, 30, 3)
    assert out[:, 13:17].mean() > 100 and out[:, :5].max() == 0


def test_truncated_clip_still_samples_what_exists(tmp_path):
    path = write_video(tmp_path / "full.avi", num_frames=40)
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    clip = read_clip(cut, num_frames=4, size=16)
    assert clip.lengths[0] == 4
    assert brightness_index(clip.frames[0]).max() < 25  # sampled over the first half only


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 50])
def test_bad_files_raise_media_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError):
        read_clip(path, num_frames=4, size=16)
    with pytest.raises(MediaError, match="file not found"):
        read_clip(tmp_path / "missing.mp4", num_frames=4, size=16)


def test_stream_frames_is_lazy(tmp_path):
    path = write_video(tmp_path / "clip.mp4", num_frames=30)
    frames = stream_frames(path, size=16, every=10)
    index, t, frame = next(frames)
    assert (index, t, frame.shape) == (0, 0.0, (16, 16, 3))
    assert [i for i, _, _ in frames] == [10, 20]


def test_stream_frames_at_a_rate_takes_the_first_frame_of_each_interval(tmp_path):
    """rate=10 on a 30 fps clip: every third frame; on a 15 fps clip: 10 frames of 15 a second, none twice; size None:
    the frames as decoded."""
    thirty = write_video(tmp_path / "thirty.mp4", num_frames=30, fps=30, width=96, height=64)
    assert [i for i, _, _ in stream_frames(thirty, 16, rate=10)] == list(range(0, 30, 3))
    fifteen = write_video(tmp_path / "fifteen.mp4", num_frames=30, fps=15)
    taken = [(i, t) for i, t, _ in stream_frames(fifteen, 16, rate=10)]
    assert [i for i, _ in taken] == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24, 26, 27, 29]
    assert all(b - a <= 2 / 15 + 1e-9 for (_, a), (_, b) in zip(taken, taken[1:]))
    slow = write_video(tmp_path / "slow.mp4", num_frames=6, fps=5)
    assert [i for i, _, _ in stream_frames(slow, 16, rate=10)] == list(range(6))  # a lower frame rate: each frame once
    _, _, whole = next(stream_frames(thirty, None, rate=10))
    assert whole.shape == (64, 96, 3)
