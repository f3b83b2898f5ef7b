"""Streaming audio and video together: a causal audio-visual run exported as one `step` per frame that also takes the
sound since the frame before, checked against the whole-clip model and run by `actrec stream` on video files with and
without a sound track.

Slow: a causal av_fusion (motion features, MFCCs, backoff fusion) trained on bars moving up or down, each direction
with its own tone, exported (float and int8), its streaming files checked and streamed.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tests.conftest import FAST, TINY
from tests.test_stream_video import bar_frames, write_bar_clips

SAMPLE_RATE = 16000
TONES = {"Up": 440.0, "Down": 1200.0}
AV_STREAM = ["model.name=av_fusion", "preprocess.modalities=[video,audio]", "model.bidirectional=false", "model.pooling=mean",
             "preprocess.mfcc_framing=causal", "preprocess.normalize=dataset", "preprocess.encoder=motion", "preprocess.num_frames=8",
             "preprocess.audio_seconds=2.0", "model.audio_stack=4", "model.fusion=backoff", "train.modality_dropout=0.5",
             "train.modality_loss=1.0"]


def tone(hz: float, seconds: float, seed: int) -> np.ndarray:
    """A tone with a little noise, mono float32 at SAMPLE_RATE."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.4 * np.sin(2 * np.pi * hz * t) + 0.02 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def av_stream_run(tmp_path_factory):
    """Up and Down bars (write_bar_clips), each direction with its tone; a causal av_fusion trained on them and exported."""
    from pipeline.stages.export import export
    from pipeline.stages.preprocess import preprocess
    from pipeline.stages.train import train

    data = write_bar_clips(tmp_path_factory.mktemp("av_bars"), sound=lambda name, seed: tone(TONES[name], 2.0, seed))
    run = tmp_path_factory.mktemp("av_stream")
    args = FAST + TINY + AV_STREAM + [f"data.root={data}", "train.epochs=30", "export.formats=[float,int8]", "export.latency_runs=3",
                                      "export.representative_samples=4"]
    preprocess(None, run, args, progress=False)
    train(None, run, args, progress=False)
    return run, export(run, progress=False), data


@pytest.mark.slow
def test_audio_visual_streaming_files_take_a_frame_and_its_hops_and_match_the_whole_clip_model(av_stream_run):
    from ai_edge_litert.interpreter import Interpreter

    run, result, _ = av_stream_run
    spec = json.loads((run / "export" / "preprocessing.json").read_text())["stream"]
    # 8 frames over 2 s of each training clip: 4 frames per second; 25 hops of 640 samples per second: 7 per frame, and one more
    assert spec["modality"] == "av" and spec["step_inputs"] == ["frame", "frame_valid", "samples", "audio_hops"]
    # (the container's duration, sound included, is a little over 2 s)
    assert spec["frame_rate"] == pytest.approx(4.0, rel=0.05) and spec["hop_seconds"] == pytest.approx(1 / spec["frame_rate"])
    assert spec["window_hops"] == 8
    assert spec["hop_samples"] == 640 and spec["hops_per_step"] == 8 and spec["sample_rate"] == SAMPLE_RATE
    shapes = {s["name"]: s["shape"] for s in spec["inputs"]}
    assert shapes["frame"] == [1, 32, 32, 3] and shapes["samples"] == [1, 8 * 640] and shapes["audio_hops"] == [1, 1]
    assert shapes["video_present"] == shapes["audio_present"] == [1, 1] and shapes["audio_gru0_h"] == shapes["video_gru0_h"] == [1, 8]
    assert shapes["audio_mean_window"] == [1, 50, 8] and shapes["video_mean_window"] == [1, 8, 8]  # each branch's window: 2 s
    states = [s["name"] for s in spec["inputs"] if s["name"] not in spec["step_inputs"]]
    for fmt in ("float", "int8"):
        interpreter = Interpreter(model_path=str(run / "export" / f"model_stream_{fmt}.tflite"))
        assert interpreter.get_signature_list() == {"step": {"inputs": sorted(shapes), "outputs": sorted(["probabilities", *states])}}
        row = result["formats"][f"stream_{fmt}"]
        assert not row["flex_ops"] and not {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "WHILE"} & set(row["ops"])
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["keras"]["accuracy"] == 1.0  # learnable, learnt
    stream_float, stream_int8 = parity["formats"]["stream_float"], parity["formats"]["stream_int8"]
    assert stream_float["max_abs_diff_prob"] < 1e-4 and stream_float["top1_agreement"] == 1.0 and stream_float["latency_of"] == "one frame"
    assert stream_int8["top1_agreement"] == 1.0 and stream_int8["accuracy"] == 1.0


@pytest.mark.slow
def test_a_stripped_or_shortened_sound_track_streams_as_the_whole_clip_model_reads_it(av_stream_run):
    """The streaming file on a test clip without sound, and with sound that ends inside a hop, equals the whole-clip
    TFLite model on the same inputs (a missing modality never opens; padding past the sound's end is masked)."""
    from pipeline.runtime.stream import StreamingClassifier
    from pipeline.runtime.tflite import TFLiteClassifier, file_inputs

    run, _, data = av_stream_run
    export_dir = run / "export"
    preprocessing = json.loads((export_dir / "preprocessing.json").read_text())
    whole, streaming = TFLiteClassifier(export_dir / "model_float.tflite"), StreamingClassifier(export_dir / "model_stream_float.tflite")
    clip = file_inputs(data / "Up/v_Up_g01_c01.mp4", preprocessing)[0]
    for valid in (0, 20_000 - 200, 9_000):  # no sound; the last hop cut short; sound for less than half the frames
        cut = {**clip, "num_samples": np.int32(valid), "waveform": np.where(np.arange(len(clip["waveform"])) < valid, clip["waveform"], 0.0)}
        cut["waveform"] = cut["waveform"].astype(np.float32)
        np.testing.assert_allclose(streaming.run_clip(cut), whole.predict(cut), atol=1e-4)
    with_sound, without = whole.predict(clip), whole.predict({**clip, "num_samples": np.int32(0)})
    assert np.abs(with_sound - without).max() > 1e-3  # the sound changes the answer: the check can fail


@pytest.mark.slow
@pytest.mark.parametrize("sound", [True, False])
def test_stream_a_video_with_or_without_its_sound_prints_each_action(av_stream_run, tmp_path, capsys, sound):
    """12 s: bars going up with Up's tone for 6 s, then down with Down's: `actrec stream` says Up, then Down after 6 s;
    the same video without a sound track streams from its frames alone, with one warning line."""
    from pipeline.stages.stream import stream
    from tests.media_factory import write_video

    run, _, _ = av_stream_run
    frames = np.concatenate([bar_frames(-1, 6.0, 10, seed=7), bar_frames(1, 6.0, 10, seed=7, start=3.0)])
    audio = np.concatenate([tone(TONES["Up"], 6.0, 1), tone(TONES["Down"], 6.0, 2)]) if sound else None
    path = write_video(tmp_path / "up_then_down.mp4", fps=10, frames=frames, sound=audio, sample_rate=SAMPLE_RATE)
    out = io.StringIO()
    detections = stream(run, str(path), as_json=True, out=out)
    assert [d.label for d in detections] == ["Up", "Down"], detections
    up, down = detections
    assert 0.9 <= up.time <= 2.5 and 6.0 < down.time <= 8.5, detections  # warm-up is half a window: 4 frames = 1 s
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [d.to_json() for d in detections]
    warning = f"actrec: warning: {path}: no audio track: classified from video only"
    assert capsys.readouterr().err.strip().splitlines() == ([] if sound else [warning])
