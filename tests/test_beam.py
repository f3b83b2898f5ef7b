"""`actrec preprocess --runner beam`: the same files as the local runner, through tf.io.gfile URLs, clear errors.

The clips are the embedded action data (make_actions, 2 per class, with its fault files), encoded by
small_cnn with random weights at 32 px, so the whole module runs in about a minute on 2 cores. Tests that make those
clips are `slow`; the fast lane keeps the configuration errors, which come before any clip is read.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data_prep.actions import make_actions
from pipeline import storage
from pipeline.datasets import ManifestRow, index_dataset, write_manifest
from pipeline.errors import UserError
from pipeline.stages.preprocess import preprocess
from tests.test_preprocess import read_examples

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["preprocess.encoder=small_cnn", "preprocess.weights=null", "preprocess.image_size=32", "preprocess.num_frames=4",
         "preprocess.audio_seconds=1.0", "preprocess.shard_size=4", "data.val_fraction=0.0"]


@pytest.fixture(scope="module")
def actions(tmp_path_factory):
    """18 action clips (9 classes x 2) plus the fault files: empty, truncated, no audio, text as .mp4, unknown class."""
    root = tmp_path_factory.mktemp("actions")
    make_actions(root, clips_per_class=2, seed=0, with_faults=True, progress=False, workers=2)
    return root


@pytest.fixture(scope="module")
def local_run(actions, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    preprocess(None, run, SMALL + [f"data.root={actions}", "preprocess.workers=0"], progress=False)
    return run


def read_url_examples(run_dir: str) -> dict:
    """clip id -> parsed example, for a run dir behind a URL (read_examples reads local paths)."""
    index = json.loads(storage.path(f"{run_dir}/features/index.json").read_text())
    spec = {name: tf.io.VarLenFeature(tf.float32 if f["dtype"] == "float32" else tf.string if f["dtype"] in ("string", "uint8") else tf.int64)
            for name, f in index["features"].items()}
    out = {}
    for names in index["shards"].values():
        for record in tf.data.TFRecordDataset([f"{run_dir}/features/{name}" for name in names]):
            ex = {k: tf.sparse.to_dense(v).numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
            out[ex["clip_id"][0].decode()] = ex
    return out


def assert_same_examples(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for clip_id in sorted(expected):
        assert got[clip_id].keys() == expected[clip_id].keys()
        for name, value in expected[clip_id].items():
            np.testing.assert_array_equal(got[clip_id][name], value, err_msg=f"{clip_id}: {name}")


@pytest.mark.slow
def test_beam_writes_the_same_files_as_the_local_runner(actions, local_run, tmp_path, capsys):
    """DirectRunner with 2 worker processes: same shards (byte for byte), index.json and errors as the local runner."""
    beam_run = tmp_path / "beam"
    index = preprocess(None, beam_run, SMALL + [f"data.root={actions}", "preprocess.workers=2"], progress=False, runner="beam")
    printed = capsys.readouterr().out

    local_index, expected = read_examples(local_run)
    _, got = read_examples(beam_run)
    assert_same_examples(got, expected)  # example by example, after sorting by clip id
    assert len(got) == 19
    del index["config_hash"], local_index["config_hash"]  # preprocess.workers differs: 2 here, 0 in the local run
    assert index == local_index  # counts, shard names, schema, encoder, mfcc stats, errors
    errors = dict(tuple(e) for e in index["errors"])
    assert "Jump/v_Jump_g98_c02.mp4" in got and "Walk/v_Walk_g99_c01.mp4" in errors  # no sound track: cached, audio absent
    assert (beam_run / "preprocess_errors.csv").read_text() == (local_run / "preprocess_errors.csv").read_text()
    local_files = sorted(p.name for p in (local_run / "features").iterdir())
    assert sorted(p.name for p in (beam_run / "features").iterdir()) == local_files  # no leftovers (plan, temp files)
    for name in index["shards"]["train"] + index["shards"]["test"]:
        assert (beam_run / "features" / name).read_bytes() == (local_run / "features" / name).read_bytes()
    # the encoder is loaded in DoFn.setup: once per worker process, not once per clip
    loads = int(printed.split("frame encoder loaded ")[1].split(" ")[0])
    assert 1 <= loads <= 2, printed

    again = preprocess(None, beam_run, SMALL + [f"data.root={actions}", "preprocess.workers=2"], progress=False, runner="beam")
    assert again["counts"] == index["counts"] and "nothing to do" in capsys.readouterr().out


@pytest.mark.slow  # makes and preprocesses the clips (~15 s)
def test_beam_reads_and_writes_urls_through_tf_gfile(actions, local_run, tmp_path, capsys):
    """Clips and run dir behind URLs (TensorFlow's in-memory ram:// file system, so in-process Beam workers):
    the same examples as the local run, and a clip missing from the bucket is listed, not fatal."""
    index = index_dataset(actions, "video", "auto", 1, 0.0, 0.25, None, 0)
    manifest = tmp_path / "manifest.csv"
    missing = "Clap/v_Clap_g09_c09.mp4"
    write_manifest(index.rows + [ManifestRow(missing, "Clap", "train", "g09")], manifest)
    bucket = f"ram://actrec-test-{tmp_path.name}"
    for file in actions.rglob("*.mp4"):
        tf.io.gfile.makedirs(f"{bucket}/data/{file.parent.name}")
        tf.io.gfile.copy(str(file), f"{bucket}/data/{file.parent.name}/{file.name}")

    classes = f"data.classes=[{', '.join(index.classes)}]"  # classInd.txt order, as the local run (same label ids)
    result = preprocess(None, f"{bucket}/run", SMALL + [f"data.root={bucket}/data", classes, "preprocess.workers=0"],
                        manifest=manifest, progress=False, runner="beam")
    assert_same_examples(read_url_examples(f"{bucket}/run"), read_examples(local_run)[1])
    errors = dict(tuple(e) for e in result["errors"])
    assert errors[missing].startswith("cannot read from data.root")
    assert "Jump/v_Jump_g98_c02.mp4" not in errors
    assert storage.path(f"{bucket}/run/preprocess_errors.csv").read_text().startswith("path,reason")
    assert {"config.yaml", "preprocess_errors.csv"} <= set(tf.io.gfile.listdir(f"{bucket}/run"))
    assert not tf.io.gfile.exists(f"{bucket}/run/features/.beam_plan.jsonl")
    assert "frame encoder loaded 1 time(s)" in capsys.readouterr().out


def test_configuration_mistakes_are_one_line_errors(tmp_path):
    from pipeline.stages.preprocess_beam import pipeline_options

    actions = tmp_path / "clips"  # never read: every mistake is found before the data
    actions.mkdir()

    with pytest.raises(UserError, match="--beam-option runer: not a Beam pipeline option .did you mean 'runner'"):
        pipeline_options(["runer=DataflowRunner"], workers=2)
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        pipeline_options(["direct_num_workers"], workers=2)
    with pytest.raises(UserError, match="save_main_session: a flag; expected true or false"):
        pipeline_options(["save_main_session=yes"], workers=2)
    options = pipeline_options(["runner=FlinkRunner", "flink_master=host:8081", "save_main_session=true"], workers=2).get_all_options()
    assert (options["runner"], options["flink_master"], options["save_main_session"]) == ("FlinkRunner", "host:8081", True)
    # a run dir TensorFlow cannot reach fails before any work
    # (a scheme no file system claims: s3:// is one once tensorflow-io is imported, and then waits minutes for a network)
    with pytest.raises(UserError, match="nosuch://bucket/run: run dir is not reachable through tf.io.gfile"):
        preprocess(None, "nosuch://bucket/run", SMALL + [f"data.root={actions}"], progress=False, runner="beam")
    with pytest.raises(UserError, match="--manifest"):
        preprocess(None, tmp_path / "run", SMALL + ["data.root=ram://nowhere"], progress=False, runner="beam")
    with pytest.raises(UserError, match="use --runner beam"):
        preprocess(None, tmp_path / "run", SMALL + ["data.root=ram://nowhere"], progress=False, runner="local")
    assert not (tmp_path / "run").exists()


def test_missing_beam_extra_names_the_install_command(tmp_path):
    """Without apache_beam importable, `--runner beam` prints one line naming `pip install -e .[beam]` and exits 2."""
    actions = tmp_path / "clips"  # never read: the missing extra is found first
    actions.mkdir()
    code = ("import sys; sys.modules['apache_beam'] = None; from pipeline.cli import main; "
            f"sys.exit(main(['preprocess', '--run-dir', {str(tmp_path / 'run')!r}, '--runner', 'beam', '--set', 'data.root={actions}']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["actrec: error: --runner beam needs Apache Beam, which is not installed: pip install -e .[beam]"]
    assert not (tmp_path / "run").exists()
