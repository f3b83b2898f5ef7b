"""`actrec predict` on raw files: top-k lines and JSON, WAV vs video runs, bad input, streamed timelines.

Tests that need a trained run are `slow` (the session's trained_run takes most of a minute to build); the fast lane
keeps what is decided before a model is loaded.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.media.video import read_clip, stream_frames
from pipeline.runtime.keras_model import RunModel
from pipeline.stages.predict import FrameWindows, SlidingWindows, predict
from tests import fault_corpus as fc
from tests.media_factory import write_video

SPEECH_RATE = 16000


def tone_wav(path, hz: float, seconds: float = 1.0, start: float = 0.2, length: float = 0.6, amplitude: float = 0.4):
    """A 16 kHz mono WAV: silence with a `length`-second sine at `hz` from `start`."""
    t = np.arange(int(seconds * SPEECH_RATE)) / SPEECH_RATE
    wave = np.where((t >= start) & (t < start + length), amplitude * np.sin(2 * np.pi * hz * t), 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave.astype(np.float32), SPEECH_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """An audio_rnn trained on a Speech Commands-style tree: 'no' is a high tone, 'yes' a low one (8 epochs; the run
    test_faults and test_litert read too: fault_corpus.shared_speech_run, built once per pytest process)."""
    return fc.shared_speech_run(tmp_path_factory)[1]


@pytest.mark.slow
def test_action_run_predicts_clips_like_evaluate(trained_run, dataset):
    clips = [dataset / "Fast/v_Fast_g01_c01.mp4", dataset / "Slow/v_Slow_g01_c01.mp4"]
    results = predict(trained_run, clips, top=3)
    runner = RunModel(trained_run)
    for clip, result in zip(clips, results):
        assert result["path"] == str(clip) and result["error"] is None
        np.testing.assert_allclose(result["probs"], runner.predict_clip(clip)[0], atol=1e-6)  # evaluate's numbers
        assert [t["label"] for t in result["top"]] == [["Fast", "Slow"][i] for i in np.argsort(-result["probs"], kind="stable")]
        assert len(result["top"]) == 2  # top-3 of 2 classes
        assert result["top"][0]["prob"] >= result["top"][1]["prob"] and sum(t["prob"] for t in result["top"]) == pytest.approx(1, abs=1e-4)
        assert set(result["ms"]) == {"decode", "features", "model"} and result["ms"]["decode"] > 0
    assert len(predict(trained_run, clips[:1], top=1)[0]["top"]) == 1


@pytest.mark.slow
def test_speech_run_predicts_wavs_and_refuses_videos(speech_run, dataset, tmp_path):
    low, high = tone_wav(tmp_path / "low.wav", 450.0), tone_wav(tmp_path / "high.wav", 1520.0)
    results = predict(speech_run, [low, high, dataset / "Fast/v_Fast_g01_c01.mp4"], top=2)
    assert [r["top"][0]["label"] for r in results[:2]] == ["yes", "no"]
    assert results[2]["error"].startswith("a video, but this run") and "audio files (.wav" in results[2]["error"]
    # a long recording in windows: one row per second, the word heard in each
    long = tmp_path / "three.wav"
    soundfile.write(long, np.concatenate([soundfile.read(f)[0] for f in (low, high, low)]).astype(np.float32), SPEECH_RATE)
    (result,) = predict(speech_run, [long], window=1.0, stride=1.0, out=tmp_path / "timelines")
    assert result["windows"] == 3
    assert [["no", "yes"][i] for i in result["window_probs"].argmax(axis=1)] == ["yes", "no", "yes"]


@pytest.mark.slow
def test_timelines_into_the_run_dir_wait_for_its_writer(speech_run, tmp_path):
    """predict --window writes RUN/predict: while another command writes the run dir it refuses, naming it; timelines
    written elsewhere (--out) and plain predictions, which write nothing there, go on."""
    from pipeline.rundir import process_started

    low = tone_wav(tmp_path / "low.wav", 450.0)
    other = os.getppid()  # a live process that is not this one
    lock = speech_run / ".lock"
    lock.write_text(json.dumps({"pid": other, "command": "train", "started": process_started(other)}))
    try:
        with pytest.raises(UserError, match=rf"`actrec train` \(pid {other}\) is writing this run dir"):
            predict(speech_run, [low], window=1.0)
        assert not (speech_run / "predict").exists()
        (elsewhere,) = predict(speech_run, [low], window=1.0, out=tmp_path / "timelines")
        (plain,) = predict(speech_run, [low])
        assert elsewhere["windows"] == 1 and plain["top"][0]["label"] == elsewhere["top"][0]["label"] == "yes"
    finally:
        lock.unlink()
    (own,) = predict(speech_run, [low], window=1.0)
    assert Path(own["timeline_csv"]).parent == speech_run / "predict" and not lock.exists()  # its lock released


@pytest.mark.slow
def test_wav_given_to_a_video_run(trained_run, tmp_path):
    (result,) = predict(trained_run, [tone_wav(tmp_path / "word.wav", 440.0)])
    assert result["error"].startswith("an audio file, but this run") and "video clips (.mp4" in result["error"]


@pytest.mark.slow
def test_cli_json_lines_and_bad_input_in_one_batch(trained_run, dataset, tmp_path, capsys):
    good = dataset / "Slow/v_Slow_g01_c02.mp4"
    (tmp_path / "notes.txt").write_text("not media\n")
    (tmp_path / "renamed.mp4").write_text("a text file renamed .mp4\n" * 50)
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty_dir").mkdir()
    silent = write_video(tmp_path / "silent.mp4", num_frames=20)  # no audio track: the av_fusion run uses the frames alone
    inputs = [good, tmp_path / "missing.mp4", tmp_path / "empty_dir", tmp_path / "notes.txt", tmp_path / "renamed.mp4",
              tmp_path / "truncated.mp4", silent, dataset / "Fast/v_Fast_g01_c02.mp4"]
    code = main(["predict", "--run-dir", str(trained_run), "--json", "--top-k", "2", "--verbose", *map(str, inputs)])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]  # stdout is pure JSON lines
    assert code == 1 and [line["path"] for line in lines] == [str(p) for p in inputs]
    errors = {line["path"]: line.get("error") for line in lines}
    assert errors[str(tmp_path / "missing.mp4")] == "file not found"
    assert errors[str(tmp_path / "empty_dir")].startswith("folder holds no media files")
    assert errors[str(tmp_path / "notes.txt")].startswith("not a media file (expected a video .mp4")
    assert errors[str(tmp_path / "renamed.mp4")].startswith("cannot open as video")
    assert "corrupt" in errors[str(tmp_path / "truncated.mp4")] or "truncated" in errors[str(tmp_path / "truncated.mp4")]
    assert errors[str(silent)] is None
    assert [line["warning"] for line in lines if "warning" in line] == ["no audio track: classified from video only"]
    assert f"warning: {silent}: no audio track: classified from video only" in err.splitlines()
    for line in (lines[0], lines[-1]):  # the good files of the batch still get their predictions
        assert "error" not in line and [t["label"] for t in line["top"]] in (["Fast", "Slow"], ["Slow", "Fast"])
        assert set(line["ms"]) == {"decode", "features", "model"}
    assert "predict: 8 file(s), 3 predicted, 5 failed" in err


def test_usage_errors_come_before_any_model_is_loaded(tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    no_run = tmp_path / "no_run"
    assert main(["predict", "--run-dir", str(no_run), "--stride", "1", str(folder)]) == 2
    assert "actrec: error: --stride needs --window" in capsys.readouterr().err
    assert main(["predict", "--run-dir", str(no_run), str(folder)]) == 2
    assert capsys.readouterr().err.startswith("actrec: error: ")
    with pytest.raises(UserError, match="--window and --stride must be finite and > 0"):
        predict(no_run, [folder], window=0.0)
    assert not no_run.exists()


def test_a_window_samples_its_frames_as_read_clip_samples_a_clip(tmp_path):
    """The streamed timeline's windows: the frames of a 1-s window are those read_clip samples from a 1-s clip."""
    one_window = write_video(tmp_path / "one.mp4", num_frames=15, fps=15, audio_seconds=1.0, tone_hz=440.0)  # 1 s
    windows = FrameWindows(SlidingWindows(15.0, 1.0, 0.4), num_frames=4)
    streamed = [w for i, _, frame in stream_frames(one_window, 32, keep=windows.keep) for w in windows.add(i, frame)] + windows.complete()
    ((window, frames, length),) = streamed
    assert (window.start, window.end, length) == (0, 15, 4)
    np.testing.assert_array_equal(frames, read_clip(one_window, num_frames=4, size=32).frames[0])


@pytest.mark.slow
def test_cli_text_lines_and_model_errors(trained_run, dataset, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for clip in sorted((dataset / "Fast").glob("v_Fast_g01_*.mp4")):
        shutil.copy(clip, folder / clip.name)
    assert main(["predict", "--run-dir", str(trained_run), "--verbose", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[-1] == "predict: 2 file(s), 2 predicted, 0 failed"
    for line, clip in zip(out, sorted(folder.iterdir())):
        # path: label 0.91, label 0.09  [decode 12 ms, features 3 ms, model 20 ms]
        assert line.startswith(f"{clip}: ") and line.count(",") == 3 and "[decode " in line and " ms, model " in line
    assert main(["predict", "--run-dir", str(trained_run), "--model", str(tmp_path / "model.tflite"), str(folder)]) == 2
    assert "model.tflite: no such file" in capsys.readouterr().err
    assert main(["predict", "--run-dir", str(trained_run), "--model", str(tmp_path / "model.h5"), str(folder)]) == 2
    assert "model.h5: not a .tflite file" in capsys.readouterr().err
    (tmp_path / "export").mkdir()
    (tmp_path / "export/model_float.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "export/preprocessing.json").write_text('{"labels_file": "labels.txt", "inputs": []}')
    (tmp_path / "export/labels.txt").write_text("a\n")
    assert main(["predict", "--run-dir", str(trained_run), "--model", str(tmp_path / "export/model_float.tflite"), str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_float.tflite: not a TFLite model" in err[0]


@pytest.mark.slow
def test_timeline_streams_a_long_video(trained_run, tmp_path):
    """A clip 10x longer needs 10x more windows but holds no more frames: the video is streamed."""
    normal = write_video(tmp_path / "normal.mp4", num_frames=30, fps=15, audio_seconds=2.0, tone_hz=1500.0)  # 2 s
    long = write_video(tmp_path / "long.mp4", num_frames=300, fps=15, audio_seconds=20.0, tone_hz=1500.0)  # 20 s
    one_window = write_video(tmp_path / "one.mp4", num_frames=15, fps=15, audio_seconds=1.0, tone_hz=440.0)  # 1 s
    sound_ends = write_video(tmp_path / "sound_ends.mp4", num_frames=30, fps=15, audio_seconds=0.5)  # later windows are silent
    out = tmp_path / "timelines"
    # 1-s windows (15 frames) every 0.4 s (6 frames): starts 0, 6, 12, ... while start + 15 <= frames
    results = predict(trained_run, [normal, long, one_window, sound_ends], window=1.0, stride=0.4, out=out)
    short_result, long_result = results[:2]
    assert [r["windows"] for r in results] == [3, 48, 1, 3] and not any(r["error"] for r in results)

    with open(out / "long_timeline.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["start_s", "end_s", "top_label", "top_prob", "Fast", "Slow"] and len(rows) == 1 + 48
    assert [float(r[0]) for r in rows[1:]] == pytest.approx([0.4 * k for k in range(48)])
    assert [float(r[1]) - float(r[0]) for r in rows[1:]] == pytest.approx([1.0] * 48)
    np.testing.assert_allclose([[float(v) for v in r[4:]] for r in rows[1:]], long_result["window_probs"], atol=1e-6)
    assert (out / "long_timeline.png").stat().st_size > 5000 and long_result["timeline_png"] == str(out / "long_timeline.png")

    # memory: frames held at once do not grow with the video (T=4 sampled frames x at most 4 open windows)
    assert short_result["max_frames_held"] == long_result["max_frames_held"] <= 4 * 4
    # how a window samples its frames: test_a_window_samples_its_frames_as_read_clip_samples_a_clip


@pytest.mark.slow
def test_tflite_model_agrees_with_keras(trained_run, dataset, tmp_path, tmp_path_factory, capsys):
    """--model PATH.tflite (the exported graph: CNN, MFCC and head in one file) gives Keras' answers."""
    # the float export of a copy of the session's run, made once per pytest process (test_litert runs it too)
    tflite = fc.shared_float_export(fc.shared_copy(trained_run, tmp_path_factory, "trained_run_exported")) / "model_float.tflite"
    clips = sorted(dataset.glob("*/v_*_g01_*.mp4"))
    long = write_video(tmp_path / "long.mp4", num_frames=60, fps=15, audio_seconds=4.0, tone_hz=1500.0)
    keras_results = predict(trained_run, [*clips, long])
    tflite_results = predict(trained_run, [*clips, long], model=str(tflite))
    for k, t in zip(keras_results, tflite_results):
        assert t["error"] is None and t["top"][0]["label"] == k["top"][0]["label"]
        np.testing.assert_allclose(t["probs"], k["probs"], atol=1e-3)
        assert t["ms"]["features"] == 0  # the frame CNN runs inside the .tflite graph
    (keras_windows,) = predict(trained_run, [long], window=1.0, stride=0.5, out=tmp_path)
    (tflite_windows,) = predict(trained_run, [long], model=str(tflite), window=1.0, stride=0.5, out=tmp_path)
    assert tflite_windows["windows"] == keras_windows["windows"] == 7
    np.testing.assert_allclose(tflite_windows["window_probs"], keras_windows["window_probs"], atol=1e-3)
    assert tflite_windows["max_frames_held"] <= keras_windows["max_frames_held"] + 4  # + the one window (T=4) being classified

    assert main(["predict", "--run-dir", str(trained_run), "--model", str(tflite), "--json", str(clips[0])]) == 0
    assert json.loads(capsys.readouterr().out)["top"][0]["label"] == keras_results[0]["top"][0]["label"]
