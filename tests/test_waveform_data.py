"""train.source raw_audio: WAVs through tensorflow-io in tf.data, against the preprocessing path, and a training run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402

from data_prep.commands import make_commands  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.datasets import ManifestRow  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.features.waveform_data import check_wavs, waveform_dataset, waveform_rows  # noqa: E402
from pipeline.media.audio import fit_length, load_audio  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import evaluate_split, train  # noqa: E402
from tests.test_train import ROOT  # noqa: E402

RAW_AUDIO = ["preprocess.encoder=none", "preprocess.workers=0", "train.source=raw_audio", "data.keywords=[]"]  # closed set: raw_audio reads whole WAVs
TINY = ["model.units=8", "model.bidirectional=false", "train.batch_size=4", "train.early_stopping=0", "train.epochs=2"]


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """A spoken-commands dataset: 10 words x 3 speakers (one per split), 16 kHz 16-bit WAVs."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("commands")
    make_commands(root, per_word=3, seed=0, progress=False, workers=1, aux_per_speaker=0, background_seconds=0)
    return root


def speech_config(root, *extra):
    return load_config(ROOT / "configs/commands.yaml", [f"data.root={root}"] + RAW_AUDIO + list(extra))


@pytest.fixture(scope="module")
def speech_run(commands, tmp_path_factory):
    """(run dir, index) of the dataset preprocessed for raw-audio training."""
    run = tmp_path_factory.mktemp("run")
    return run, preprocess(speech_config(commands), run, progress=False)


def preprocessing_windows(cfg, rows):
    """What preprocessing's audio_arrays computes: load_audio (soundfile + soxr) then fit_length."""
    p = cfg.preprocess
    num_samples = round(p.audio_seconds * p.sample_rate)
    pairs = [fit_length(load_audio(Path(cfg.data.root) / row.path, p.sample_rate), num_samples) for row in rows]
    return np.stack([w for w, _ in pairs]), np.array([v for _, v in pairs])


def dataset_windows(cfg, index, split):
    batches = list(waveform_dataset(cfg, index, split, batch_size=4))
    waveforms = np.concatenate([x["waveform"].numpy() for x, _ in batches])
    valid = np.concatenate([x["num_samples"].numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy().argmax(-1) for _, y in batches])
    return waveforms, valid, labels


def test_same_rate_gives_the_preprocessing_samples(commands, speech_run):
    _, index = speech_run
    cfg = speech_config(commands)
    rows = waveform_rows(cfg, index, "val")
    assert len(rows) == index["counts"]["val"] == 10

    waveforms, valid, labels = dataset_windows(cfg, index, "val")

    expected, expected_valid = preprocessing_windows(cfg, rows)
    assert waveforms.shape == expected.shape == (10, 16000) and waveforms.dtype == np.float32
    # 16-bit WAVs at the run's rate: both paths are int16 / 32768, with no resampling.
    np.testing.assert_array_equal(waveforms, expected)
    np.testing.assert_array_equal(valid, expected_valid)
    assert [index["classes"][i] for i in labels] == [row.label for row in rows]


@pytest.mark.parametrize("sample_rate", [8000, 22050])
def test_resampled_windows_match_soxr(commands, speech_run, sample_rate):
    """tensorflow-io's resampler vs soxr HQ (preprocessing): same length and alignment, ~25-30 dB SNR."""
    _, index = speech_run
    cfg = speech_config(commands, f"preprocess.sample_rate={sample_rate}")

    waveforms, valid, _ = dataset_windows(cfg, index, "val")

    expected, expected_valid = preprocessing_windows(cfg, waveform_rows(cfg, index, "val"))
    assert waveforms.shape == expected.shape == (10, sample_rate)
    np.testing.assert_array_equal(valid, expected_valid)
    error = waveforms - expected
    snr = 10 * np.log10(np.sum(expected**2, axis=1) / np.sum(error**2, axis=1))
    correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(waveforms, expected)]
    print(f"\n16 kHz -> {sample_rate} Hz, tfio vs soxr: min SNR {snr.min():.1f} dB, min correlation {min(correlation):.4f}, "
          f"max |diff| {np.abs(error).max():.4f} (peaks up to {np.abs(expected).max():.2f})")
    assert snr.min() > 20.0  # measured 27 dB (8 kHz) and 25 dB (22.05 kHz)
    assert min(correlation) > 0.99


@pytest.mark.slow
def test_speech_model_trains_from_raw_wavs(commands, speech_run, tmp_path):
    features_run, _ = speech_run
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(features_run / "features", run / "features")

    result = train(ROOT / "configs/commands.yaml", run, [f"data.root={commands}"] + RAW_AUDIO + TINY, progress=False)

    assert result["epochs"] == 2 and np.isfinite(result["val_loss"])
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert sorted(t.name.split(":")[0] for t in model.inputs) == ["num_samples", "waveform"]
    assert model.get_layer("mfcc").params.n_mfcc == 20  # MFCCs computed in the model
    # The cached waveforms (the preprocessing path, what evaluate feeds) score the same model.
    assert evaluate_split(run, "test")["clips"] == 10


def test_raw_audio_needs_speech_wavs_and_a_waveform_model(commands, speech_run, tmp_path):
    _, index = speech_run
    with pytest.raises(UserError, match="train.source' raw_audio needs data.kind: speech and preprocess.encoder: none"):
        load_config(ROOT / "configs/commands.yaml", [f"data.root={commands}", "train.source=raw_audio"])
    with pytest.raises(UserError, match="raw_audio feeds only waveform and num_samples"):
        waveform_dataset(speech_config(commands), index, "train", ["mfcc", "mfcc_length"])
    wide = tmp_path / "24bit.wav"
    soundfile.write(wide, np.zeros(1600, np.float32), 16000, subtype="PCM_24")
    with pytest.raises(UserError, match="24bit.wav: train.source raw_audio reads 16-bit PCM WAV files only"):
        check_wavs(tmp_path, [ManifestRow("24bit.wav", "yes", "train", "")])
    # A dataset that changed since preprocessing is refused, not silently mixed.
    (commands / "yes" / "extra_nohash_0.wav").write_bytes((next((commands / "yes").glob("*.wav"))).read_bytes())
    try:
        with pytest.raises(UserError, match="clips found now.*re-run `actrec preprocess --overwrite`"):
            waveform_rows(speech_config(commands), index, "train")
    finally:
        (commands / "yes" / "extra_nohash_0.wav").unlink()
