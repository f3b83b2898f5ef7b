"""`actrec evaluate` on raw clips: the same numbers as the cached features, subsets of classes, bad input.

Tests that need the session's trained_run (most of a minute to build) are `slow`.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.stages.evaluate import evaluate
from pipeline.stages.train import evaluate_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_raw_clips_match_cached_features(trained_run):
    metrics = evaluate(trained_run, progress=False)
    cached = evaluate_split(trained_run, "test")
    assert metrics["num_clips"] == cached["clips"] == 4
    assert metrics["top1"] == pytest.approx(cached["accuracy"], abs=1e-6)  # one definition of every transform
    out = trained_run / "eval/test"
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "confusion_matrix.csv", "per_class.png", "reliability.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["top1"] == metrics["top1"] and saved["top5"] is None  # 2 classes: no top-5


@pytest.mark.slow
def test_multi_view_reports_single_and_multi(trained_run):
    evaluate(trained_run, views=3, crops=3, progress=False)
    saved = json.loads((trained_run / "eval/test-v3-c3/metrics.json").read_text())
    assert "single-view (centre)" in saved["extra"] and "multi-view (9 views)" in saved["extra"]


@pytest.mark.slow
def test_folder_with_some_classes(trained_run, dataset, tmp_path):
    folder = tmp_path / "only_slow"
    (folder / "Slow").mkdir(parents=True)
    for clip in sorted((dataset / "Slow").glob("*_c01.mp4")):
        shutil.copy(clip, folder / "Slow" / clip.name)
    (folder / "Slow" / "broken.mp4").write_text("not a video")
    metrics = evaluate(trained_run, data=folder, progress=False)
    assert metrics["num_clips"] == 3 and metrics["per_class"]["Slow"]["support"] == 3
    saved = json.loads((trained_run / "eval/only_slow/metrics.json").read_text())
    assert saved["skipped"]["count"] == 1


@pytest.mark.slow
def test_unknown_class_lists_the_known_ones(trained_run, tmp_path):
    (tmp_path / "Dance").mkdir()
    shutil.copy(next((ROOT / "tests").glob("*.py")), tmp_path / "Dance" / "x.mp4")
    with pytest.raises(UserError, match="class 'Dance' is not one the run knows; known: Fast, Slow"):
        evaluate(trained_run, data=tmp_path, progress=False)


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--run-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert "no trained model (model.keras); run `actrec train" in result.stderr and "Traceback" not in result.stderr
