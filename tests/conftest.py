"""Session-wide fixtures: the tiny dataset and the runs several test modules share, each built once per session.

    dataset      two classes (Fast, Slow) x 3 groups x 2 MP4 clips, UCF101 layout, plus two fault files
    feature_run  its features cached with FAST (tiny frames, small CNN)            <- actrec preprocess
    trained_run  an av_fusion model trained on them for 6 epochs (TINY settings)   <- actrec train

Tests that change a run copy or symlink it first; these are read-mostly.
"""

import pytest

from tests.media_factory import write_ucf101_lists, write_video

FAST = ["preprocess.encoder=small_cnn", "preprocess.image_size=32", "preprocess.num_frames=4", "preprocess.audio_seconds=1.0",
        "preprocess.workers=0", "preprocess.shard_size=3", "data.val_fraction=0.0"]
TINY = ["model.units=8", "train.batch_size=4", "train.early_stopping=0", "model.dropout=0.0", "train.learning_rate=0.01"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Two classes x 3 groups x 2 clips (MP4, each class its own tone), UCF101 layout, plus fault files."""
    root = tmp_path_factory.mktemp("clips")
    train, test = [], []
    for c, (frames, fps, tone) in {"Fast": (12, 24, 440.0), "Slow": (30, 15, 1500.0)}.items():
        (root / c).mkdir()
        for g in (1, 2, 3):
            for k in (1, 2):
                rel = f"{c}/v_{c}_g{g:02d}_c{k:02d}.mp4"
                write_video(root / rel, num_frames=frames + g + k, fps=fps, audio_seconds=0.8, tone_hz=tone)
                (test if g == 1 else train).append(rel)
    write_video(root / "Fast/v_Fast_g02_c03.mp4", num_frames=10)  # no audio track
    (root / "Slow/v_Slow_g02_c03.mp4").write_bytes(b"")
    train += ["Fast/v_Fast_g02_c03.mp4", "Slow/v_Slow_g02_c03.mp4"]
    return write_ucf101_lists(root, ["Fast", "Slow"], train, test)


@pytest.fixture(scope="session")
def feature_run(dataset, tmp_path_factory):
    from pipeline.stages.preprocess import preprocess

    run = tmp_path_factory.mktemp("features")
    preprocess(None, run, FAST + [f"data.root={dataset}"], progress=False)
    return run


@pytest.fixture(scope="session")
def trained_run(dataset, tmp_path_factory):
    from pipeline.stages.preprocess import preprocess
    from pipeline.stages.train import train

    run = tmp_path_factory.mktemp("run")
    args = FAST + [f"data.root={dataset}"] + TINY + ["model.name=av_fusion", "train.epochs=6"]
    preprocess(None, run, args, progress=False)
    train(None, run, args, progress=False)
    return run
