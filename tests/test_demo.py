"""`actrec demo --quick` end to end, as the README's main command runs it (real clips, real espeak-ng).

The first demo runs in a new process, as a user starts it; the commands that then only read or reuse its run dirs
run in this process (`pipeline.cli.main`, the entry point's code), which saves two TensorFlow start-ups.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_runs_every_stage_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pipeline.cli", "demo", "--quick", "--out", str(out)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "actrec demo finished" in first.stdout
    assert (out / "data/actions/classInd.txt").is_file() and (out / "data/commands/testing_list.txt").is_file()
    for name in ("actions_av", "commands"):
        run = out / "runs" / name
        assert (run / "model.keras").is_file() and (run / "features/index.json").is_file()
        assert json.loads((run / "train_done.json").read_text())["epochs"] == 3
        metrics = json.loads((run / "eval/test/metrics.json").read_text())
        correct = sum(row[i] for i, row in enumerate(metrics["confusion"]))  # the report's own counts agree with its top-1
        assert metrics["num_clips"] > 0 and metrics["top1"] == pytest.approx(correct / metrics["num_clips"])
        assert (run / "eval/test/report.md").is_file()
        export_dir = run / "export"
        for file in ("saved_model/saved_model.pb", "model_float.tflite", "model_int8.tflite", "labels.txt", "preprocessing.json"):
            assert (export_dir / file).is_file(), file
        assert {"model_stream_float.tflite", "model_stream_int8.tflite"} <= {p.name for p in export_dir.iterdir()}  # both recipes are causal
        parity = json.loads((export_dir / "parity.json").read_text())
        assert parity["formats"]["float"]["top1_agreement"] == 1.0 and not parity["errors"]
        # the summary table quotes the measured numbers, not others
        assert f"{metrics['top1']:.3f}" in first.stdout
    # the speech run is a 12-label keyword spotter, and the summary says what rejecting costs
    commands = json.loads((out / "runs/commands/eval/test/metrics.json").read_text())
    assert commands["class_names"][-2:] == ["_silence_", "_unknown_"] and len(commands["class_names"]) == 12
    assert f"commands: 12 labels (_silence_, _unknown_ included): FRR {commands['frr_at_far']:.3f}" in first.stdout or \
        (commands["frr_at_far"] is None and "commands: 12 labels" in first.stdout)
    # the streaming file ran over a recording of unseen test words, and the summary says what it found
    assert (out / "stream_commands.wav").is_file()
    assert "commands: streaming: " in first.stdout and " keywords detected in stream_commands.wav" in first.stdout
    # the action run streamed a video of unseen actors, frames and sound, and parity says the streaming file is the model
    from pipeline.media.probe import probe_media

    info = probe_media(out / "stream_actions_av.mp4")
    assert info.has_video and info.has_audio
    # each modality alone (evaluate --drop) is the single-modality model trained first (train.unimodal_first), on the same clips
    run = out / "runs/actions_av"
    dropped = {m: json.loads((run / f"eval/test-no-{m}/metrics.json").read_text())["top1"] for m in ("audio", "video")}
    alone = {m: json.loads((run / f"stages/{m}_rnn/eval/test/metrics.json").read_text())["top1"] for m in ("video", "audio")}
    assert dropped == {"audio": alone["video"], "video": alone["audio"]}
    assert (f"actions_av: video alone (--drop audio) {dropped['audio']:.3f} vs {alone['video']:.3f} for the video-only model "
            f"trained first (stages/video_rnn)") in first.stdout
    assert "actions_av: streaming: " in first.stdout and " actions announced while on screen" in first.stdout
    stream_parity = json.loads((out / "runs/actions_av/export/parity.json").read_text())["formats"]["stream_float"]
    assert stream_parity["top1_agreement"] == 1.0 and stream_parity["max_abs_diff_prob"] < 1e-4
    # the predict stage printed one line per unseen clip, through the exported model, with no errors
    predicted = [line for line in first.stdout.splitlines() if line.startswith(str(out / "data"))]
    assert len(predicted) == 4 and not any(": error:" in line for line in predicted)
    assert first.stdout.count("2 predicted, 0 failed") == 2

    # the run dirs are ordinary: every command accepts them
    capsys.readouterr()
    assert main(["train", "--run-dir", str(out / "runs/commands")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # a second demo reuses every finished stage
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    second = capsys.readouterr()
    assert "Traceback" not in second.err, second.err[-3000:]
    assert second.out.count("nothing to do") == 4  # 2 x preprocess + 2 x train
    assert second.out.count(": reusing ") == 8  # 2 x evaluate + 2 x export + 2 x evaluate --drop + 2 stages' evaluate
