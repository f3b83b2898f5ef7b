"""`actrec demo --quick` end to end, as the README's main command runs it (real clips, real espeak-ng)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_runs_every_stage_and_reuses_them(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pipeline.cli", "demo", "--quick", "--out", str(out)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "actrec demo finished" in first.stdout
    for name in ("actions_av", "commands"):
        run = out / "runs" / name
        assert (run / "model.keras").is_file() and (run / "features/index.json").is_file()
        assert json.loads((run / "train_done.json").read_text())["epochs"] == 3
    assert (out / "data/actions/classInd.txt").is_file() and (out / "data/commands/testing_list.txt").is_file()
    # the run dirs are ordinary: every command accepts them
    shown = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--run-dir", str(out / "runs/commands")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "nothing to do" in shown.stdout
    # a second demo reuses every finished stage
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("nothing to do") == 4  # 2 x preprocess + 2 x train
