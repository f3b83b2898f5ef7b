"""The preprocess stage on real files: shards, schema, errors, config changes.

Resuming after SIGKILL (byte-identical shards, no partial shard ever visible) is tested in tests/test_faults.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import UserError
from pipeline.features.records import plan_shards
from pipeline.stages.preprocess import preprocess
from tests.conftest import FAST


def read_examples(run_dir):
    index = json.loads((Path(run_dir) / "features/index.json").read_text())
    spec = {name: tf.io.VarLenFeature(tf.float32 if f["dtype"] == "float32" else tf.string if f["dtype"] in ("string", "uint8") else tf.int64)
            for name, f in index["features"].items()}
    out = {}
    for names in index["shards"].values():
        for name in names:
            for record in tf.data.TFRecordDataset(str(Path(run_dir) / "features" / name)):
                ex = {k: tf.sparse.to_dense(v).numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
                out[ex["clip_id"][0].decode()] = ex
    return index, out


def test_preprocess_writes_shards_index_and_errors(dataset, tmp_path):
    run = tmp_path / "run"
    index = preprocess(None, run, FAST + [f"data.root={dataset}"], progress=False)
    assert index["classes"] == ["Fast", "Slow"]
    assert index["counts"] == {"train": 9, "val": 0, "test": 4}  # with the video without sound, its audio absent
    assert index["features"]["frame_features"]["shape"] == [1, 4, 128]  # small_cnn at 32 px: 2x2 grid x 32 ch
    assert index["features"]["mfcc"]["shape"] == [101, 20]
    assert index["encoder"]["name"] == "small_cnn" and index["sampling"]["num_frames"] == 4
    assert len(index["shards"]["train"]) == 3  # 9 rows in shards of 3
    errors = dict(tuple(e) for e in index["errors"])
    assert list(errors) == ["Slow/v_Slow_g02_c03.mp4"] and errors["Slow/v_Slow_g02_c03.mp4"] == "empty file (0 bytes)"
    csv_text = (run / "preprocess_errors.csv").read_text()
    assert csv_text.startswith("path,reason") and "v_Slow_g02_c03.mp4" in csv_text
    assert (run / "config.yaml").is_file() and (run / "features/encoder.weights.h5").is_file()

    _, examples = read_examples(run)
    ex = examples["Slow/v_Slow_g01_c01.mp4"]
    assert ex["frame_features"].shape == (1 * 4 * 128,) and np.isfinite(ex["frame_features"]).all()
    assert ex["frame_lengths"].tolist() == [4] and ex["label"].tolist() == [1]
    assert 70 <= ex["mfcc_length"][0] <= 101  # 0.8 s of audio in a 1 s window: padding is masked
    silent = examples["Fast/v_Fast_g02_c03.mp4"]  # no audio track: the frames, and audio absent (length 0)
    assert silent["mfcc_length"].tolist() == [0] and silent["frame_lengths"].tolist() == [4]
    assert np.abs(silent["frame_features"]).sum() > 0
    # re-running a finished run does nothing and says so
    again = preprocess(None, run, FAST + [f"data.root={dataset}"], progress=False)
    assert again["counts"] == index["counts"]


def test_changed_config_refuses_without_overwrite(dataset, tmp_path):
    run = tmp_path / "run"
    preprocess(None, run, FAST + [f"data.root={dataset}", "preprocess.modalities=[video]"], progress=False)
    with pytest.raises(UserError, match="different data/preprocess config.*--overwrite"):
        preprocess(None, run, FAST + [f"data.root={dataset}", "preprocess.modalities=[video]", "preprocess.num_frames=3"], progress=False)
    index = preprocess(None, run, FAST + [f"data.root={dataset}", "preprocess.modalities=[video]", "preprocess.num_frames=3"],
                       overwrite=True, progress=False)
    assert index["features"]["frame_features"]["shape"][1] == 3
    assert "Fast/v_Fast_g02_c03.mp4" not in dict(tuple(e) for e in index["errors"])  # video-only: no audio is fine


def test_retrained_weights_file_is_not_served_from_the_cache(dataset, tmp_path):
    """The same preprocess.weights path with new contents (stage 1 retrained) gives other features, not the cached ones."""
    from pipeline.features.encoders import build_encoder

    run, weights = tmp_path / "run", tmp_path / "cnn.weights.h5"
    args = FAST + [f"data.root={dataset}", "preprocess.modalities=[video]", f"preprocess.weights={weights}"]
    build_encoder("small_cnn", 32, seed=1).save_weights(str(weights))
    preprocess(None, run, args, progress=False)
    _, before = read_examples(run)
    preprocess(None, run, args, progress=False)  # unchanged file: the finished features are kept
    build_encoder("small_cnn", 32, seed=2).save_weights(str(weights))
    with pytest.raises(UserError, match=f"another {weights} \\(the file changed since\\).*--overwrite"):
        preprocess(None, run, args, progress=False)
    preprocess(None, run, args, overwrite=True, progress=False)
    _, after = read_examples(run)
    clip = "Slow/v_Slow_g01_c01.mp4"
    assert not np.allclose(before[clip]["frame_features"], after[clip]["frame_features"])


def test_raw_frames_for_the_hybrid_model(dataset, tmp_path):
    index = preprocess(None, tmp_path / "run", FAST + [f"data.root={dataset}", "preprocess.encoder=none"], progress=False)
    assert index["features"]["frames"] == {"shape": [1, 4, 32, 32, 3], "dtype": "uint8"}
    assert index["features"]["waveform"]["shape"] == [16000]
    _, examples = read_examples(tmp_path / "run")
    frames = np.frombuffer(examples["Fast/v_Fast_g01_c01.mp4"]["frames"][0], np.uint8).reshape(1, 4, 32, 32, 3)
    assert frames[0, 0, :, :10, 0].mean() > 200  # RGB order: the clip's left half is red


def test_multi_clip_views(dataset, tmp_path):
    index = preprocess(None, tmp_path / "run", FAST + [f"data.root={dataset}", "preprocess.sampling=multi_clip",
                                                       "preprocess.num_clips=3", "preprocess.modalities=[video]"], progress=False)
    assert index["features"]["frame_features"]["shape"] == [3, 4, 128]


def test_backends_agree(dataset):
    from pipeline.features.encoders import FrameEncoder, build_encoder

    encoder = build_encoder("mobilenet_v3_small", 64)
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    tflite = FrameEncoder(encoder, "tflite", batch_size=4).encode(frames)
    keras_out = FrameEncoder(encoder, "keras", batch_size=4).encode(frames)
    assert tflite.shape == keras_out.shape == (5, 576)
    assert np.abs(tflite - keras_out).max() <= 1e-5


@pytest.mark.slow
def test_workers_encode_the_same_features(dataset, tmp_path):
    """workers > 0 with the TFLite backend: each worker decodes and encodes whole clips; same examples as in-process."""
    args = FAST + [f"data.root={dataset}"]  # small_cnn through TFLite
    in_process = preprocess(None, tmp_path / "in_process", args, progress=False)
    pooled = preprocess(None, tmp_path / "pooled", args + ["preprocess.workers=2"], progress=False)

    assert pooled["counts"] == in_process["counts"] and pooled["errors"] == in_process["errors"]
    _, expected = read_examples(tmp_path / "in_process")
    _, got = read_examples(tmp_path / "pooled")
    assert sorted(got) == sorted(expected)
    for clip_id, example in expected.items():
        np.testing.assert_allclose(got[clip_id]["frame_features"], example["frame_features"], atol=1e-6)
        np.testing.assert_array_equal(got[clip_id]["frame_lengths"], example["frame_lengths"])
        np.testing.assert_array_equal(got[clip_id]["mfcc"], example["mfcc"])


def test_shard_plan_is_stable():
    from pipeline.datasets import ManifestRow

    rows = [ManifestRow(f"c/{i}.mp4", "c", "train" if i % 3 else "test", "g") for i in range(10)]
    a, b = plan_shards(rows, 3), plan_shards(list(reversed(rows)), 3)
    assert [(s.name, [r.path for r in s.rows]) for s in a] == [(s.name, [r.path for r in s.rows]) for s in b]


def test_impossible_config_fails_before_work(dataset, tmp_path):
    with pytest.raises(UserError, match="preprocess.n_fft"):
        preprocess(None, tmp_path / "run", FAST + [f"data.root={dataset}", "preprocess.audio_seconds=0.1", "preprocess.n_fft=4096"], progress=False)
    # the hybrid's stage 2 before its stage 1 ran: said at preprocess, not after caching the raw frames
    missing = tmp_path / "runs/actions_cnn/frame_encoder.weights.h5"
    with pytest.raises(UserError, match=f"preprocess.weights: file {missing} not found.*`actrec train` of a hybrid run writes it"):
        preprocess(None, tmp_path / "run", FAST + [f"data.root={dataset}", "preprocess.encoder=none", f"preprocess.weights={missing}"], progress=False)
    assert not (tmp_path / "run").exists()
