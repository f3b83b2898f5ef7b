"""The `motion` frame encoder: the numpy reference and the in-graph layer agree, its numbers mean the motion they
claim (direction, strip, no dependence on colours or on where the actor stands), and a run uses it end to end."""

import json

import numpy as np
import pytest

from pipeline import export, preprocess, train
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.features.motion import DIRECTIONS, MOTION_DIM, STRIPS, direction_vectors, motion_features
from tests.conftest import FAST, TINY

S = 64  # frame side in these tests: 8 strips of 8 rows
FIELDS = 3 + DIRECTIONS  # per strip: u, v, energy, flow in each direction


def textured_background(seed: int = 0) -> np.ndarray:
    """uint8 [S, S, 3]: a smooth random texture (gradients everywhere, as a real wall has)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(60, 190, (8, 8, 3))
    return np.kron(coarse, np.ones((S // 8, S // 8, 1))).astype(np.uint8)


def moving_square(dx: float, dy: float, frames: int = 6, x0: int = 20, y0: int = 20, size: int = 12,
                  colour=(250, 250, 250), background=None) -> np.ndarray:
    """uint8 [T, S, S, 3]: a blurred-edged square moving (dx, dy) pixels per frame over a still background."""
    import cv2

    base = np.full((S, S, 3), 30, np.uint8) if background is None else background
    clip = []
    for t in range(frames):
        frame = base.copy()
        x, y = x0 + dx * t, y0 + dy * t
        cv2.rectangle(frame, (round(x * 16), round(y * 16)), (round((x + size) * 16), round((y + size) * 16)), colour, -1,
                      cv2.LINE_AA, shift=4)
        clip.append(frame)
    return np.stack(clip)


def per_strip(features: np.ndarray) -> np.ndarray:
    """[T, MOTION_DIM] -> [T, STRIPS, FIELDS]."""
    return features.reshape(len(features), STRIPS, FIELDS)


def test_reference_and_layer_agree_on_real_frames_and_batches(tmp_path):
    from pipeline.features.encoders import MotionFeatures
    from pipeline.media.video import read_clip
    from tests.media_factory import write_video

    rng = np.random.default_rng(0)
    decoded = read_clip(write_video(tmp_path / "clip.mp4", num_frames=20), num_frames=5, size=S).frames[0]  # an H.264 file
    clips = np.stack([moving_square(1.5, -0.7, frames=5, background=textured_background(1)),
                      rng.integers(0, 256, (5, S, S, 3), dtype=np.uint8), decoded])
    reference = motion_features(clips)
    assert reference.shape == (3, 5, MOTION_DIM) and reference.dtype == np.float32 and reference[2, 1:].any()
    np.testing.assert_allclose(np.asarray(MotionFeatures()(clips)), reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(motion_features(clips[1]), reference[1])  # a clip alone = the same clip in a batch
    assert not reference[:, 0].any()  # frame 0 has nothing before it


def test_flow_points_where_the_square_moves_and_nowhere_else():
    rows = slice(20 // (S // STRIPS), (20 + 12) // (S // STRIPS) + 1)  # the strips the square covers
    d = direction_vectors()
    right, down, left, up = (int(np.argmax(d.T @ np.array(v))) for v in ((1, 0), (0, 1), (-1, 0), (0, -1)))
    for (dx, dy), toward, away in [((1.0, 0), right, left), ((0, 1.0), down, up), ((-1.0, 0), left, right), ((0, -1.0), up, down)]:
        f = per_strip(motion_features(moving_square(dx, dy)))[1:]  # [T-1, STRIPS, FIELDS]
        moving = f[:, rows]
        u, v, flow = moving[..., 0].sum(), moving[..., 1].sum(), moving[..., 3:]
        assert np.sign(u) == np.sign(dx) if dx else abs(u) < 0.1 * abs(v), (dx, dy, u, v)
        assert np.sign(v) == np.sign(dy) if dy else abs(v) < 0.1 * abs(u), (dx, dy, u, v)
        assert flow[..., toward].sum() > 5 * flow[..., away].sum(), (dx, dy, flow.sum((0, 1)))
        far = [s for s in range(STRIPS) if s < rows.start - 1 or s > rows.stop]  # strips the square never reaches
        assert not f[:, far].any()


def test_a_still_scene_and_colours_give_no_motion():
    background = textured_background(2)
    still = np.stack([background] * 4)
    assert not motion_features(still).any()
    # light-on-dark and dark-on-light squares moving the same way: the same direction of flow
    light = per_strip(motion_features(moving_square(0, 1.0, colour=(240, 240, 240))))
    dark = per_strip(motion_features(moving_square(0, 1.0, colour=(0, 0, 0), background=np.full((S, S, 3), 200, np.uint8))))
    assert np.sign(light[1:, :, 1].sum()) == np.sign(dark[1:, :, 1].sum()) == 1
    np.testing.assert_array_equal(np.argmax(light[1:, 3, 3:], -1), np.argmax(dark[1:, 3, 3:], -1))


def test_where_the_actor_stands_does_not_matter():
    """Strips pool over the whole width: the same motion at the left or the right of the frame gives the same numbers."""
    left, right = (motion_features(moving_square(0, 1.0, x0=x)) for x in (8, 40))
    np.testing.assert_allclose(left, right, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["preprocess.image_size=100"], r"key 'preprocess.image_size' must be a multiple of 8 with encoder motion"),
    (["preprocess.num_frames=1"], r"key 'preprocess.num_frames' must be at least 2 with encoder motion"),
    (["preprocess.frame_difference=true"], r"key 'preprocess.frame_difference' must be false \(it reads frame changes itself\) with encoder motion"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config("actions_av", overrides)
    load_config("actions_av", [*overrides, "preprocess.modalities=[audio]"])  # no video, no motion encoder: no error


def test_motion_has_no_weights():
    from pipeline.features.encoders import check_encoder_weights

    with pytest.raises(UserError, match=r"preprocess.weights: the motion encoder has no weights; use null"):
        check_encoder_weights("motion", "imagenet")


@pytest.mark.slow  # preprocess, train and export a tiny run (~40 s)
def test_a_motion_run_caches_normalises_and_exports_the_same_features(dataset, tmp_path):
    from pipeline.runtime.keras_model import load_trained_model

    run = tmp_path / "run"
    args = [*FAST, f"data.root={dataset}", *TINY, "preprocess.encoder=motion", "preprocess.audio_seconds=0.25",
            "model.name=av_fusion", "train.epochs=2", "export.latency_runs=3", "export.representative_samples=8"]
    index = preprocess(None, run, args, progress=False)
    assert index["features"]["frame_features"]["shape"] == [1, 4, MOTION_DIM]
    assert index["encoder"]["weights_file"] is None and not (run / "features/encoder.weights.h5").exists()
    stats = index["frame_stats"]  # the video branch standardises with the training set's statistics
    assert len(stats["mean"]) == len(stats["std"]) == MOTION_DIM and stats["frames"] == 4 * index["counts"]["train"]
    train(None, run, args, progress=False)
    norm = load_trained_model(run / "model.keras").get_layer("video_norm")
    assert type(norm).__name__ == "Normalization"
    np.testing.assert_allclose(np.ravel(norm.mean), stats["mean"], rtol=1e-6)
    parity = export(run, "float", progress=False)
    assert parity["formats"]["float"]["top1_agreement"] == 1.0 and parity["formats"]["float"]["max_abs_diff_prob"] < 1e-4
    assert json.loads((run / "export/preprocessing.json").read_text())["inputs"][0]["name"] == "frames"
