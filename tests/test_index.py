"""The indexer: layouts, splits by group, and every unusable file reported with its reason."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipeline.datasets import detect_layout, group_of, index_dataset, read_manifest, write_manifest
from pipeline.errors import UserError
from tests.media_factory import write_video


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    classes = ["Clap", "Walk"]
    train, test = [], []
    for c in classes:
        (root / c).mkdir()
        for g in (1, 2, 3):
            rel = f"{c}/v_{c}_g{g:02d}_c01.mp4"
            write_video(root / rel, num_frames=6, audio_seconds=0.5)
            (test if g == 1 else train).append(rel)
    (root / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    (root / "trainlist01.txt").write_text("".join(f"{r} 1\n" for r in train) + "../outside.mp4 1\nWalk/v_Walk_g09_c01.mp4 2\n")
    (root / "testlist01.txt").write_text("".join(f"{r}\n" for r in test))
    # faults
    (root / "Walk/v_Walk_g02_c02.mp4").write_bytes(b"")
    (root / "Clap/v_Clap_g02_c02.mp4").write_text("not a video\n" * 20)
    (root / "Dance").mkdir()
    write_video(root / "Dance/v_Dance_g01_c01.mp4", num_frames=4)
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.mp4"
    write_video(outside, num_frames=4)
    os.symlink(outside, root / "Clap/v_Clap_g03_c09.mp4")
    write_video(root / "Clap/v_Clap_g03_c02.mp4", num_frames=4)  # no audio track
    with open(root / "trainlist01.txt", "a") as f:
        f.write("Clap/v_Clap_g03_c02.mp4 1\nWalk/v_Walk_g02_c02.mp4 2\nClap/v_Clap_g02_c02.mp4 1\n")
    return root


def test_ucf101_layout(ucf_tree):
    assert detect_layout(ucf_tree) == "ucf101"
    index = index_dataset(ucf_tree, val_fraction=0.0)
    assert index.classes == ["Clap", "Walk"]
    by_path = {r.path: r for r in index.rows}
    assert by_path["Clap/v_Clap_g01_c01.mp4"].split == "test"
    assert by_path["Walk/v_Walk_g02_c01.mp4"].split == "train"
    assert by_path["Walk/v_Walk_g02_c01.mp4"].group == "g02"
    reasons = dict(index.problems)
    assert reasons["Walk/v_Walk_g02_c02.mp4"] == "empty file (0 bytes)"
    assert reasons["Clap/v_Clap_g02_c02.mp4"].startswith("cannot open as media")
    assert "unknown label 'Dance'" in reasons["Dance/v_Dance_g01_c01.mp4"]
    assert "outside the dataset root" in reasons["Clap/v_Clap_g03_c09.mp4"]
    assert "escapes the dataset root" in reasons["../outside.mp4"]
    assert "missing on disk" in reasons["Walk/v_Walk_g09_c01.mp4"]
    assert dict(index.warnings)["Clap/v_Clap_g03_c02.mp4"].startswith("no audio track")
    assert "Clap/v_Clap_g03_c02.mp4" in by_path  # kept: a video-only model can use it


def test_validation_split_by_group(ucf_tree):
    index = index_dataset(ucf_tree, val_fraction=0.5, seed=3)
    groups = {s: {r.group for r in index.rows if r.split == s} for s in ("train", "val", "test")}
    assert groups["val"] and groups["train"] and not (groups["val"] & groups["train"])
    assert not (groups["test"] & (groups["train"] | groups["val"]))
    assert index_dataset(ucf_tree, val_fraction=0.5, seed=3).rows == index.rows  # deterministic


def test_speech_commands_layout(tmp_path):
    for word in ("yes", "no"):
        (tmp_path / word).mkdir()
        for speaker in ("aaaa", "bbbb", "cccc"):
            soundfile.write(tmp_path / word / f"{speaker}_nohash_0.wav", np.full(1600, 0.1, np.float32), 16000, subtype="PCM_16")
    (tmp_path / "_background_noise_").mkdir()
    soundfile.write(tmp_path / "_background_noise_" / "white.wav", np.zeros(160, np.float32), 16000)
    (tmp_path / "validation_list.txt").write_text("yes/bbbb_nohash_0.wav\nno/bbbb_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("yes/cccc_nohash_0.wav\nno/cccc_nohash_0.wav\n")
    index = index_dataset(tmp_path, kind="speech")
    assert index.layout == "speech_commands" and index.classes == ["no", "yes"]
    splits = {(r.path, r.split, r.group) for r in index.rows}
    assert ("yes/cccc_nohash_0.wav", "test", "cccc") in splits and ("no/bbbb_nohash_0.wav", "val", "bbbb") in splits
    assert len(index.rows) == 6  # the background-noise folder is not a class


def test_folders_layout_draws_test_groups(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for g in range(1, 6):
            write_video(tmp_path / c / f"v_{c}_g{g:02d}_c01.avi", num_frames=3)
    index = index_dataset(tmp_path, layout="auto", test_fraction=0.2, val_fraction=0.25)
    assert index.layout == "folders"
    groups = {s: {r.group for r in index.rows if r.split == s} for s in ("train", "val", "test")}
    assert len(groups["test"]) == 1 and len(groups["val"]) == 1 and len(groups["train"]) == 3


def test_group_of():
    assert group_of("Walk/v_Walk_g08_c03.avi") == "g08"
    assert group_of("yes/0a7c2a8d_nohash_1.wav") == "0a7c2a8d"
    assert group_of("kinetics/abc123_000010_000020.mp4") == "abc123_000010_000020"


def test_manifest_round_trip_and_errors(ucf_tree, tmp_path):
    index = index_dataset(ucf_tree)
    path = tmp_path / "manifest.csv"
    write_manifest(index.rows, path)
    assert read_manifest(path) == index.rows
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(["../../etc/passwd", "Walk", "train", "g01"])
    with pytest.raises(UserError, match="escapes the dataset root"):
        read_manifest(path)
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_missing_root_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="dataset folder not found"):
        index_dataset(tmp_path / "nope")
    with pytest.raises(UserError, match="no video files found"):
        index_dataset(tmp_path)


def test_cli_index_reports_faults(ucf_tree, tmp_path):
    out = tmp_path / "m.csv"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "index", str(ucf_tree), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "layout ucf101, 2 classes" in result.stdout
    assert "skipped Walk/v_Walk_g02_c02.mp4: empty file (0 bytes)" in result.stdout
    assert "warning Clap/v_Clap_g03_c02.mp4: no audio track" in result.stdout
    assert out.is_file() and out.read_text().startswith("path,label,split,group")


def test_every_entry_module_imports_first_in_a_fresh_interpreter():
    """pipeline.datasets imports pipeline, whose __init__ imports the stages: no import cycle whatever comes first."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for module in ("pipeline.datasets", "data_prep.actions", "pipeline.stages.preprocess", "pipeline.cli"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, (module, done.stderr[-500:])
