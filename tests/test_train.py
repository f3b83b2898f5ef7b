"""The train stage: learns above chance, resumes after SIGKILL, stops on NaN, refuses mismatched runs."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.features.encoders import FRAME_ENCODER_WEIGHTS
from pipeline.stages.preprocess import preprocess
from pipeline.stages.train import read_history, train
from tests.conftest import FAST, TINY

ROOT = Path(__file__).resolve().parents[1]


def config_args(dataset, *extra):
    return FAST + [f"data.root={dataset}"] + TINY + list(extra)


@pytest.mark.slow  # trains a model: the full suite, not the fast lane
@pytest.mark.parametrize("name", ["video_rnn", "audio_rnn", "av_fusion"])
def test_train_learns_above_chance(dataset, feature_run, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(feature_run / "features", run / "features")
    result = train(None, run, config_args(dataset, f"model.name={name}", "train.epochs=12"), progress=False)
    # Fast and Slow clips differ in how fast the brightness ramps and in their tone: every model must
    # beat chance (0.5) on the held-out groups.
    assert result["val_accuracy"] > 0.5
    assert (run / "model.keras").is_file() and (run / "training_curves.png").stat().st_size > 1000
    history = read_history(run / "history.csv")
    assert len(history["epoch"]) == 12 and history["loss"][-1] < history["loss"][0]
    assert any((run / "tensorboard").rglob("*tfevents*"))
    # a finished run is not retrained; a changed train config needs --overwrite
    assert train(None, run, config_args(dataset, f"model.name={name}", "train.epochs=12"), progress=False)["epochs"] == 12
    with pytest.raises(UserError, match="--overwrite"):
        train(None, run, config_args(dataset, f"model.name={name}", "train.epochs=13"), progress=False)
    # model.fusion changes a fusion model; a model of one modality has nothing to fuse and is reused
    other_fusion = config_args(dataset, f"model.name={name}", "train.epochs=12", "model.fusion=late")
    if name == "av_fusion":
        with pytest.raises(UserError, match="--overwrite"):
            train(None, run, other_fusion, progress=False)
    else:
        assert train(None, run, other_fusion, progress=False)["epochs"] == 12


def test_mismatched_features_fail_before_training(dataset, tmp_path):
    run = tmp_path / "run"
    preprocess(None, run, FAST + [f"data.root={dataset}", "preprocess.modalities=[video]"], progress=False)
    with pytest.raises(UserError, match="needs cached 'mfcc'.*actrec preprocess"):
        train(None, run, config_args(dataset, "preprocess.modalities=[video]", "model.name=av_fusion"), progress=False)
    with pytest.raises(UserError, match="differ from the ones the features were made with"):
        train(None, run, config_args(dataset, "preprocess.num_frames=5"), progress=False)
    with pytest.raises(UserError, match="no cached features.*actrec preprocess"):
        train(None, tmp_path / "empty", config_args(dataset), progress=False)


@pytest.mark.slow  # trains a model: the full suite, not the fast lane
def test_nan_loss_stops_with_a_clear_message(dataset, feature_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(feature_run / "features", run / "features")
    with pytest.raises(UserError, match=r"NaN in epoch \d+: lower train.learning_rate or set train.clipnorm"):
        train(None, run, config_args(dataset, "model.name=video_rnn", "train.learning_rate=1e38", "train.clipnorm=0",
                                     "train.optimizer=adam", "train.schedule=constant", "train.epochs=5"), progress=False)


@pytest.mark.slow  # trains a model: the full suite, not the fast lane
def test_hybrid_trains_end_to_end_and_its_cnn_encodes_features(dataset, tmp_path):
    """The hybrid model on frame differences; its trained CNN, saved by train, is the frame encoder of a feature run."""
    import numpy as np

    from pipeline.config import load_config
    from pipeline.features.encoders import FrameDifference, build_encoder
    from pipeline.models import build_model, load_model
    from pipeline.rundir import RunDir
    from pipeline.runtime.keras_model import model_spec
    from tests.test_preprocess import read_examples

    run, features = tmp_path / "hybrid", tmp_path / "features"
    raw = FAST + [f"data.root={dataset}", "preprocess.encoder=none", "preprocess.frame_difference=true"]
    preprocess(None, run, raw, progress=False)
    result = train(None, run, raw + TINY + ["model.name=hybrid", "train.epochs=2"], progress=False)
    assert result["epochs"] == 2 and (run / "model.keras").is_file()
    cnn = load_model(run / "model.keras").get_layer("frame_encoder").layer
    weights = run / FRAME_ENCODER_WEIGHTS
    reloaded = build_encoder("small_cnn", 32, str(weights), seed=1)  # another seed: every weight must come from the file
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(reloaded(frames)), np.asarray(cnn(frames)))

    preprocess(None, features, FAST + [f"data.root={dataset}", f"preprocess.weights={weights}", "preprocess.frame_difference=true"], progress=False)
    _, clips = read_examples(run)
    _, encoded = read_examples(features)
    clip = "Fast/v_Fast_g01_c01.mp4"
    clip_frames = np.frombuffer(clips[clip]["frames"][0], np.uint8).reshape(1, 4, 32, 32, 3)
    differences = np.asarray(FrameDifference()(clip_frames))[0]
    assert (differences[0] == 128).all() and differences.dtype == np.uint8  # no change before the first frame
    cached = np.asarray(encoded[clip]["frame_features"]).reshape(4, -1)
    np.testing.assert_allclose(cached, np.asarray(cnn(differences)), atol=1e-4)  # cached through TFLite, same features

    # and a new hybrid model starts its CNN from the file (two-stage training: video only, then audio-visual)
    cfg = load_config(run / "config.yaml", [f"preprocess.weights={weights}", "seed=1"])
    restarted = build_model(model_spec(cfg, RunDir(run).read_index()), cfg.model).get_layer("frame_encoder").layer
    np.testing.assert_array_equal(np.asarray(restarted(frames)), np.asarray(cnn(frames)))


def test_a_checkpoint_carries_the_dropout_random_state(tmp_path):
    """Keras' weights files leave out the SeedGenerator states behind dropout masks: the backup's metadata keeps them,
    so a resumed run draws the masks an uninterrupted one would (the whole chain: tests/test_faults.py)."""
    import keras
    import numpy as np

    from pipeline.callbacks import AtomicBackupAndRestore, seed_states

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
        model.compile("adam", "mse")
        return model

    trained = build()
    trained.fit(np.ones((8, 4)), np.ones((8, 2)), epochs=2, batch_size=4, verbose=0)
    drawn = [v.numpy() for v in seed_states(trained)]
    assert len(drawn) == 1 and drawn[0][1] == 4  # one generator, 4 steps of masks drawn
    backup = AtomicBackupAndRestore(str(tmp_path))
    backup.set_model(trained)
    backup._current_epoch = 2
    backup._save_model()

    resumed = build()
    assert seed_states(resumed)[0].numpy()[1] == 0
    restore = AtomicBackupAndRestore(str(tmp_path))
    restore.set_model(resumed)
    restore.on_train_begin()
    assert [v.numpy().tolist() for v in seed_states(resumed)] == [d.tolist() for d in drawn]
    assert resumed._initial_epoch == 2 and AtomicBackupAndRestore.epoch_to_resume(tmp_path) == 2


@pytest.mark.slow
def test_resume_after_sigkill(dataset, feature_run, tmp_path):
    """Kill training mid-run; the same command resumes from the last finished epoch and ends at the same epoch count."""
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(feature_run / "features", run / "features")
    epochs = 8
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--run-dir", str(run), "--no-progress"]
    for a in config_args(dataset, "model.name=video_rnn", f"train.epochs={epochs}"):
        cmd += ["--set", a]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_history(run / "history.csv").get("epoch", [])) < 3:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_history(run / "history.csv")["epoch"])
    assert 3 <= done_before < epochs and not (run / "model.keras").exists()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run / "history.csv") as f:
        logged = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert sorted(set(logged)) == list(range(epochs))  # every epoch exactly once after merging
    assert logged.count(0) == 1  # resumed, not restarted from scratch
    assert (run / "model.keras").is_file()


def test_augmentations_keep_shapes_and_meaning():
    """Train-time augmentation: the shapes and dtypes models expect, one transform per clip, padding untouched."""
    import numpy as np
    import tensorflow as tf

    from pipeline.features.augment import spatial_augment, spec_augment, temporal_jitter

    # spatial_augment: a clip of 4 identical frames stays 4 identical frames (one transform per clip)
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    clip = np.repeat(frame[None], 4, axis=0)
    changed = 0
    for k in range(8):
        out = spatial_augment(tf.constant(clip), (0, k)).numpy()
        assert out.shape == clip.shape and out.dtype == np.uint8
        assert all(np.array_equal(out[0], out[t]) for t in range(1, 4))
        changed += not np.array_equal(out, clip)
    assert changed >= 6  # flips, crops and colour jitter almost always change the pixels
    # temporal_jitter: source steps stay in order within the valid length; padded steps stay where they are
    steps = tf.reshape(tf.range(6, dtype=tf.float32), [6, 1])
    jittered = temporal_jitter(steps, 4, (0, 0)).numpy()[:, 0]
    assert list(jittered[4:]) == [4.0, 5.0] and all(np.diff(jittered[:4]) >= 0) and jittered[:4].max() <= 3
    # spec_augment: same shape, a masked value is its coefficient's mean over the sequence (MFCC-like scales: c0 near
    # -275, the others near 0; one mean over all coefficients would make a masked c0 a loud burst)
    offsets = np.array([-275.0, 43.0, -8.0, 19.0] + [0.0] * 9, np.float32)
    mfcc = tf.random.normal([50, 13], seed=3) * 5.0 + offsets
    masked = spec_augment(mfcc, (0, 0), 2, 5, 2, 3).numpy()
    assert masked.shape == (50, 13)
    replaced = masked != mfcc.numpy()
    assert replaced.any(axis=1).sum() >= 3 and replaced[:, 0].any()  # time bands cross c0 too
    column_means = np.broadcast_to(mfcc.numpy().mean(axis=0), masked.shape)
    np.testing.assert_allclose(masked[replaced], column_means[replaced], rtol=1e-5, atol=1e-4)


def test_cepstral_shift_adds_one_bounded_offset_per_coefficient_and_keeps_c0():
    import numpy as np
    import tensorflow as tf

    from pipeline.features.augment import cepstral_shift
    from pipeline.stages.train import cepstral_shift_scale

    mfcc = tf.random.normal([40, 5], seed=1)
    scale = [0.0, 2.0, 1.0, 0.5, 0.0]
    offsets = []
    for k in range(30):
        out = cepstral_shift(mfcc, scale, (2, k)).numpy()
        offset = out - mfcc.numpy()
        assert np.allclose(offset, offset[:1], atol=1e-5)  # the same in every frame: a filter, not noise
        assert np.all(np.abs(offset[0]) <= np.array(scale) + 1e-6) and offset[0, 0] == 0 and offset[0, 4] == 0
        offsets.append(offset[0])
    assert np.std(np.array(offsets)[:, 1]) > 0.5  # it draws across the range, differently per seed
    # the scale: the training set's standard deviation of each coefficient times the key, c0 kept; off by default
    from pipeline.config import load_config

    index = {"mfcc_stats": {"mean": [0, 0, 0], "std": [10.0, 4.0, 2.0]}}
    assert cepstral_shift_scale(index, load_config(None, ["train.cepstral_shift=0.5"])) == [0.0, 2.0, 1.0]
    assert cepstral_shift_scale(index, load_config(None, [])) is None
    with pytest.raises(UserError, match="train.cepstral_shift needs"):
        cepstral_shift_scale({}, load_config(None, ["train.cepstral_shift=0.5"]))


def test_warp_filterbank_moves_a_tone_by_the_factor_and_keeps_factor_1_exact():
    """Vocal tract length perturbation: with the warped filterbank a 1 kHz tone lands in the mel band where a
    1.15 kHz (0.87 kHz) tone lands unwarped; factor 1 is the filterbank itself."""
    import numpy as np

    from pipeline.features.augment import warp_filterbank
    from pipeline.features.mfcc_layers import MFCC

    filterbank = MFCC(framing="causal").filterbank  # [257, 40]
    np.testing.assert_allclose(warp_filterbank(filterbank, 1.0).numpy(), filterbank, atol=1e-7)
    t = np.arange(512) / 16000

    def band(hz, bank):  # the mel band with the most of a tone's power
        return int(np.argmax(np.abs(np.fft.rfft(np.hanning(512) * np.sin(2 * np.pi * hz * t))) ** 2 @ bank))

    for factor in (1.15, 0.87):
        warped = warp_filterbank(filterbank, factor).numpy()
        assert band(1000, warped) == band(1000 * factor, filterbank) != band(1000, filterbank)


def test_cut_word_keeps_the_start_of_the_word_at_the_end_of_the_window():
    import numpy as np
    import tensorflow as tf

    from pipeline.features.augment import cut_word

    word = np.zeros(16000, np.float32)  # a 0.5-s "word" from 0.25 s, silence around it
    word[4000:12000] = 0.5 * np.sin(np.arange(8000) * 0.3 + 1.0)  # no sample of it is 0
    kept = set()
    for k in range(20):
        out = cut_word(tf.constant(word), (1, k)).numpy()
        cut = 16000 - int(np.argmax(out != 0)) + 4000  # samples of the input kept: its silence, then the word's start
        assert out.shape == (16000,) and not out[: 16000 - cut].any()
        assert np.array_equal(out[16000 - cut:], word[:cut])  # the input's first `cut` samples, ending where the window ends
        kept.add(cut - 4000)
    assert min(kept) >= 0.2 * 8000 - 160 and max(kept) <= 0.8 * 8000 + 160 and len(kept) > 10  # a fifth to four fifths
    assert np.array_equal(cut_word(tf.constant(word), (1, 3)).numpy(), cut_word(tf.constant(word), (1, 3)).numpy())
    assert cut_word(tf.zeros(16000), (1, 0)).numpy().shape == (16000,)  # silence: nothing to find, no error


def test_waveform_augmentations_shift_stretch_and_mix_as_asked():
    import numpy as np
    import tensorflow as tf

    from pipeline.features.augment import change_speed, mix_background, time_shift

    impulse = np.zeros(1000, np.float32)
    impulse[500] = 1.0
    moved = set()
    for k in range(20):  # time_shift: the impulse moves by at most 50 samples, nothing wraps around
        out = time_shift(tf.constant(impulse), 50, (1, k)).numpy()
        assert out.shape == (1000,) and out.sum() == 1.0
        moved.add(int(np.argmax(out)) - 500)
    assert max(abs(m) for m in moved) <= 50 and len(moved) > 5
    edge = np.ones(1000, np.float32)  # the vacated part is silence
    shifted = time_shift(tf.constant(edge), 50, (1, 0)).numpy()
    assert shifted.sum() >= 950 and set(np.unique(shifted)) <= {0.0, 1.0}
    # change_speed: a 1 kHz tone comes out between 0.9 and 1.1 kHz, and the tones differ between draws
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    peaks = {int(np.argmax(np.abs(np.fft.rfft(change_speed(tf.constant(tone), 0.1, (1, k)).numpy())))) for k in range(10)}
    assert all(900 <= p <= 1100 for p in peaks) and len(peaks) > 3, peaks
    # mix_background: the asked signal-to-noise ratio, or nothing at probability 0
    noise = np.random.default_rng(0).standard_normal((3, 16000)).astype(np.float32)
    mixed = mix_background(tf.constant(tone), noise, 1.0, (10.0, 10.0), (1, 0)).numpy()
    added = mixed - tone
    assert 10 * np.log10(np.mean(tone ** 2) / np.mean(added ** 2)) == pytest.approx(10.0, abs=0.01)
    assert any(np.allclose(added / np.std(added), row / np.std(row), atol=1e-4) for row in noise)
    assert np.array_equal(mix_background(tf.constant(tone), noise, 0.0, (0.0, 20.0), (1, 0)).numpy(), tone)
    # stateless: the same seed draws the same, whatever ran before; other seeds draw otherwise
    assert np.array_equal(time_shift(tf.constant(impulse), 50, (1, 3)).numpy(), time_shift(tf.constant(impulse), 50, (1, 3)).numpy())


@pytest.mark.parametrize("select_on, best_epoch, stopped_at", [("loss", 0, 2), ("accuracy", 3, None)])
def test_best_epoch_goes_by_the_selected_validation_metric(tmp_path, select_on, best_epoch, stopped_at):
    """A validation loss that rises while the accuracy rises too: `loss` keeps the first epoch and stops after the
    patience; `accuracy` keeps the epoch of the highest accuracy (ties: the lower loss), and the state survives a restart."""
    import keras

    from pipeline.callbacks import BestWeights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.stop_training = False  # as fit() sets it
    epochs = [{"val_loss": 1.0, "val_accuracy": 0.33}, {"val_loss": 1.2, "val_accuracy": 0.40},
              {"val_loss": 1.3, "val_accuracy": 0.53}, {"val_loss": 1.1, "val_accuracy": 0.53}]
    stopped = None
    for epoch, logs in enumerate(epochs):
        best = BestWeights(tmp_path / select_on, patience=2, select_on=select_on)  # as a resumed run: read from disk
        best.set_model(model)
        best.on_epoch_end(epoch, logs)
        if model.stop_training and stopped is None:
            stopped = epoch
    assert best.best_epoch == best_epoch and stopped == stopped_at
    assert (tmp_path / select_on / "best.weights.h5").is_file()
