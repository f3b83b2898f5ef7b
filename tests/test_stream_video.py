"""Streaming video: a causal action model stepped one frame at a time, its TFLite `step` files, and `actrec stream` on
a video file.

Fast: the step against the whole-clip model (motion, a CNN on frames, a CNN on frame differences; GRU and LSTM;
`last` and `mean` pooling; random weights), and which configs stream.
Slow: a causal video_rnn trained on the session's two-class clips, exported, its streaming files checked (state
names and shapes, builtin ops, parity.json) and run on a video file.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.derived import streaming_blockers
from tests.conftest import FAST, TINY

CAUSAL_VIDEO = ["model.name=video_rnn", "preprocess.modalities=[video]", "model.bidirectional=false", "model.pooling=last"]


def test_causal_video_and_audio_visual_models_stream_and_the_bidirectional_one_does_not():
    assert streaming_blockers(load_config(None, FAST + CAUSAL_VIDEO)) == []
    assert streaming_blockers(load_config("actions_av", ["model.name=video_rnn", "model.bidirectional=false", "model.pooling=mean"])) == []
    assert streaming_blockers(load_config("actions_av")) == []  # the shipped audio-visual recipe streams
    reasons = streaming_blockers(load_config("actions_av_bidirectional"))
    assert [r.split(" is ")[0] for r in reasons] == ["model.bidirectional", "model.pooling", "preprocess.mfcc_framing", "preprocess.normalize"]
    assert any("mfcc_framing" in r for r in streaming_blockers(load_config("actions_av", ["preprocess.mfcc_framing=centred"])))
    assert any("encoder is none" in r for r in streaming_blockers(load_config("actions_av", ["preprocess.encoder=none"])))
    # a video model does not care how audio would be framed
    assert streaming_blockers(load_config(None, FAST + CAUSAL_VIDEO + ["preprocess.mfcc_framing=centred"])) == []


def moving_square_frames(rng, t: int, size: int) -> np.ndarray:
    """uint8 [T, S, S, 3]: a bright square moving over a noisy background (motion the encoders see)."""
    frames = rng.integers(0, 60, (t, size, size, 3)).astype(np.uint8)
    for i in range(t):
        y, x = (3 * i) % (size - 8), (5 * i) % (size - 8)
        frames[i, y : y + 8, x : x + 8] = 230
    return frames


@pytest.mark.parametrize("encoder,difference,cell,pooling", [("motion", False, "gru", "last"), ("motion", False, "lstm", "mean"),
                                                              ("small_cnn", False, "gru", "mean"), ("small_cnn", True, "lstm", "last"),
                                                              ("motion", False, "gru", "max")])
def test_frame_by_frame_equals_the_whole_clip(encoder, difference, cell, pooling):
    """From zero states, the probabilities after the last valid frame are the whole-clip model's, padding masked."""
    import tensorflow as tf

    from pipeline.deploy.graph import _encode_frames
    from pipeline.features.encoders import FrameDifference, MotionFeatures, build_encoder
    from pipeline.models import ModelSpec, build_model
    from pipeline.models.streaming import FRAME, make_stepper

    size, t = 32, 6
    cfg = load_config(None, FAST + CAUSAL_VIDEO + [f"preprocess.encoder={encoder}", f"preprocess.frame_difference={str(difference).lower()}",
                                                  f"model.cell={cell}", f"model.pooling={pooling}", "model.units=12", "model.dropout=0.0",
                                                  f"preprocess.num_frames={t}", f"preprocess.image_size={size}"])
    if encoder == "motion":
        encode = MotionFeatures()
    else:
        cnn, diff = build_encoder(encoder, size, None, seed=3), FrameDifference()
        encode = (lambda frames: _encode_frames(cnn, diff(frames))) if difference else (lambda frames: _encode_frames(cnn, frames))
    frames = moving_square_frames(np.random.default_rng(0), t, size)[None]  # [1, T, S, S, 3]
    features = np.asarray(encode(frames))  # [1, T, D]
    stats = {"mean": features.mean((0, 1)).tolist(), "std": (features.std((0, 1)) + 0.1).tolist()} if encoder == "motion" else None
    model = build_model(ModelSpec(num_classes=4, frame_features=features.shape[1:], frame_stats=stats, preprocess=cfg.preprocess, seed=1),
                        cfg.model)
    stepper = make_stepper(model, cfg, encode)
    names = [s.name for s in stepper.states()]
    assert names == (["video_previous_frame", "video_frames_seen"] * (encoder == "motion" or difference)
                     + [f"video_{cell}0_{part}" for part in ("hc" if cell == "lstm" else "h")]
                     + [f"video_{pooling}_window", f"video_{pooling}_count"] * (pooling in ("mean", "max")))
    assert stepper.input.name == FRAME and stepper.input.shape == (1, size, size, 3) and stepper.input.dtype == "uint8"
    step = tf.function(stepper.step)
    for valid in (t, t - 2):  # a full clip, and one of fewer frames than T (zero frames after, masked)
        padded = frames.copy()
        padded[:, valid:] = 0
        whole = model([encode(padded), tf.constant([valid])]).numpy()[0]
        states = {s.name: s.zeros() for s in stepper.states()}
        for i in range(valid):
            out = step({FRAME: padded[:, i], **states})
            states = {name: out[name].numpy() for name in states}
        np.testing.assert_allclose(out["probabilities"].numpy()[0], whole, atol=1e-5)
        assert np.abs(whole - model([encode(frames[:, ::-1]), tf.constant([valid])]).numpy()[0]).max() > 1e-4  # order matters


def bar_frames(direction: int, seconds: float, fps: int, seed: int, size: int = 64, start: float = 0.0) -> np.ndarray:
    """RGB uint8 [T, S, S, 3]: bright bars every 16 rows moving up (direction -1) or down (+1) over a static noisy
    background; the pattern repeats seamlessly, so a long stream has no jump that looks like the other direction."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
    frames = np.repeat(background[None], round(seconds * fps), axis=0)
    rows = np.arange(size)
    for i in range(len(frames)):
        frames[i, (rows - start - direction * 1.5 * i) % 16 < 5] = 220
    return frames


def write_bar_clips(root, sound=None):
    """Up and Down: 3 groups x 3 clips of 2 s at 10 fps, UCF101 layout; group 1 is the test split. sound(class name,
    seed) -> mono float32 samples at 16 kHz gives each clip a sound track (none by default)."""
    from tests.media_factory import write_ucf101_lists, write_video

    train, test = [], []
    for c, (name, direction) in enumerate((("Up", -1), ("Down", 1))):
        (root / name).mkdir()
        for g in (1, 2, 3):
            for k in (1, 2, 3):
                rel, seed = f"{name}/v_{name}_g{g:02d}_c{k:02d}.mp4", 10 * g + k + 100 * c
                write_video(root / rel, fps=10, frames=bar_frames(direction, 2.0, 10, seed=seed, start=5.0 * k),
                            sound=None if sound is None else sound(name, seed), sample_rate=16000)
                (test if g == 1 else train).append(rel)
    return write_ucf101_lists(root, ["Up", "Down"], train, test)


@pytest.fixture(scope="module")
def bar_clips(tmp_path_factory):
    """Up and Down bars without sound (write_bar_clips)."""
    return write_bar_clips(tmp_path_factory.mktemp("bars"))


@pytest.fixture(scope="module")
def video_stream_run(bar_clips, tmp_path_factory):
    """A causal video_rnn (motion encoder) trained on Up / Down bars and exported."""
    from pipeline.stages.export import export
    from pipeline.stages.preprocess import preprocess
    from pipeline.stages.train import train

    run = tmp_path_factory.mktemp("video_stream")
    args = FAST + TINY + CAUSAL_VIDEO + [f"data.root={bar_clips}", "preprocess.encoder=motion", "preprocess.num_frames=8",
                                         "train.epochs=30", "export.formats=[float,int8]", "export.latency_runs=3",
                                         "export.representative_samples=4"]
    preprocess(None, run, args, progress=False)
    train(None, run, args, progress=False)
    return run, export(run, progress=False)


@pytest.mark.slow
def test_video_streaming_files_have_named_states_and_match_the_whole_clip_model(video_stream_run):
    from ai_edge_litert.interpreter import Interpreter

    run, result = video_stream_run
    spec = json.loads((run / "export" / "preprocessing.json").read_text())["stream"]
    assert spec["modality"] == "video" and spec["input"] == "frame" and spec["window_hops"] == 8
    # the training clips' frames: 8 spread over 2 s
    assert spec["frame_size"] == 32 and spec["frame_rate"] == pytest.approx(4.0) and spec["hop_seconds"] == pytest.approx(0.25)
    states = {"video_previous_frame": [1, 32, 32, 3], "video_frames_seen": [1, 1], "video_gru0_h": [1, 8]}
    assert {s["name"]: s["shape"] for s in spec["inputs"]} == {"frame": [1, 32, 32, 3], **states}
    for fmt in ("float", "int8"):
        interpreter = Interpreter(model_path=str(run / "export" / f"model_stream_{fmt}.tflite"))
        assert interpreter.get_signature_list() == {"step": {"inputs": sorted(["frame", *states]), "outputs": sorted(["probabilities", *states])}}
        details = interpreter.get_signature_runner("step").get_input_details()
        assert details["frame"]["dtype"] == np.uint8
        row = result["formats"][f"stream_{fmt}"]
        assert not row["flex_ops"] and not {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "WHILE"} & set(row["ops"])
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["keras"]["accuracy"] == 1.0  # up from down: learnable, learnt
    stream_float, stream_int8 = parity["formats"]["stream_float"], parity["formats"]["stream_int8"]
    assert stream_float["max_abs_diff_prob"] < 1e-4 and stream_float["top1_agreement"] == 1.0
    assert stream_float["latency_of"] == "one frame"
    assert stream_int8["top1_agreement"] == 1.0 and stream_int8["accuracy"] == 1.0
    assert parity["checks"]["stream_float: top-1 agreement 100% and max |dprob| < 1e-4"] is True


@pytest.mark.slow
@pytest.mark.parametrize("model", ["float", "int8"])
def test_stream_a_video_prints_each_action_when_it_starts(video_stream_run, tmp_path, model):
    """A 12-s video, the bar going up for 6 s, then down: `actrec stream` says Up near the start, then Down after 6 s."""
    from pipeline.stages.stream import stream
    from tests.media_factory import write_video

    run, _ = video_stream_run
    video = np.concatenate([bar_frames(-1, 6.0, 10, seed=7), bar_frames(1, 6.0, 10, seed=7, start=3.0)])
    path = write_video(tmp_path / "up_then_down.mp4", fps=10, frames=video)
    out = io.StringIO()
    detections = stream(run, str(path), model, as_json=True, timeline=tmp_path / "timeline.png", out=out)
    assert [d.label for d in detections] == ["Up", "Down"], detections
    up, down = detections
    assert 0.9 <= up.time <= 2.5 and 6.0 < down.time <= 8.5, detections  # warm-up is half a window: 4 frames = 1 s
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [d.to_json() for d in detections]
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_video_run_streams_video_files_only(video_stream_run, tmp_path):
    import subprocess
    import sys

    run, _ = video_stream_run
    for args in (["-"], ["--mic"]):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "stream", "--run-dir", str(run), *args], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip() == (
            "actrec: error: this run streams video: give a video file as SOURCE (stdin PCM and --mic are for speech runs)"), done.stderr
    sound = tmp_path / "tone.wav"
    import soundfile as sf

    sf.write(sound, np.zeros(16000, np.float32), 16000)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "stream", "--run-dir", str(run), str(sound)], capture_output=True, text=True)
    assert done.returncode == 2 and str(sound) in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


AV_CAUSAL = ["preprocess.modalities=[video,audio]", "preprocess.audio_seconds=1.0", "preprocess.mfcc_framing=causal",
             "preprocess.normalize=dataset", "preprocess.num_frames=8", "model.name=av_fusion", "model.bidirectional=false",
             "model.dropout=0.0", "model.units=8", "model.audio_stack=2"]


@pytest.mark.parametrize("cell,pooling,fusion,normalize", [("gru", "mean", "backoff", "dataset"), ("lstm", "last", "mid", "dataset"),
                                                           ("gru", "last", "late", "dataset"), ("gru", "max", "backoff", "running")])
def test_audio_visual_steps_equal_the_whole_clip_and_a_missing_modality_never_opens(cell, pooling, fusion, normalize):
    """From zero states, a frame and the hops since the frame before per step: after the last step the probabilities
    are the whole-clip model's (random weights), with both modalities, without sound and without frames."""
    import tensorflow as tf

    from pipeline.features.mfcc import MFCCParams
    from pipeline.features.mfcc_layers import MFCC
    from pipeline.models import ModelSpec, build_model
    from pipeline.models.streaming import AVStepper
    from pipeline.runtime.stream import clip_feeds

    cfg = load_config(None, AV_CAUSAL + [f"model.cell={cell}", f"model.pooling={pooling}", f"model.fusion={fusion}",
                                         f"preprocess.normalize={normalize}"])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 8, 32, 32, 3), dtype=np.uint8)
    projection = tf.constant(rng.standard_normal((3, 6)), tf.float32)

    def encode_frames(clip):  # uint8 [1, t, S, S, 3] -> [1, t, 6]: any per-frame encoder streams
        return tf.einsum("btc,cd->btd", tf.reduce_mean(tf.cast(clip, tf.float32), axis=(2, 3)) / 255.0, projection)

    waveform = (0.1 * rng.standard_normal((1, 16000)) * np.sin(np.arange(16000) / 700)).astype(np.float32)
    mfcc = MFCC.from_params(MFCCParams.from_config(cfg.preprocess))(waveform)  # [1, 100, 20]
    stats = {"mean": mfcc.numpy().mean((0, 1)).tolist(), "std": mfcc.numpy().std((0, 1)).tolist()}
    spec = ModelSpec(num_classes=5, frame_features=(8, 6), mfcc=(100, 20), mfcc_stats=stats, preprocess=cfg.preprocess, seed=1)
    model = build_model(spec, cfg.model)
    features = encode_frames(frames)

    stepper = AVStepper(model, cfg, encode_frames, hops_per_step=9)
    assert [s.name for s in stepper.inputs()] == ["frame", "frame_valid", "samples", "audio_hops"]
    assert stepper.inputs()[2].shape == (1, 9 * 320)
    names = [s.name for s in stepper.states()]
    assert names[-2:] == ["video_present", "audio_present"] and "audio_context" in names and f"video_{cell}0_h" in names
    step = tf.function(stepper.step)
    hop = stepper.hop_samples

    def stream(num_frames: int, num_samples: int, hops_per_step: int = 9) -> np.ndarray:
        """The clip as an app streams it (runtime.stream.clip_feeds): each frame with its share of the hops."""
        states = {s.name: s.zeros() for s in stepper.states()}
        clip = {"frames": frames[0], "frame_lengths": np.int32(num_frames), "num_samples": np.int32(num_samples),
                "waveform": np.where(np.arange(16000) < num_samples, waveform[0], 0.0).astype(np.float32)}
        for feed in clip_feeds(clip, "av", hop, hops_per_step):
            if hops_per_step < 9:  # the step file takes 9 hops; a stream of fewer per step leaves the rest zero
                feed["samples"] = np.pad(feed["samples"], [(0, 0), (0, (9 - hops_per_step) * hop)])
            out = step({**feed, **states})
            states = {name: out[name].numpy() for name in states}
        return out["probabilities"].numpy()[0]

    def whole(num_frames: int, num_samples: int) -> np.ndarray:
        padded = np.where(np.arange(16000) < num_samples, waveform, 0.0).astype(np.float32)
        mfcc_frames = num_samples // cfg.preprocess.hop_length  # causal framing: a frame per whole hop_length
        return model([features, tf.constant([num_frames]), MFCC.from_params(MFCCParams.from_config(cfg.preprocess))(padded),
                      tf.constant([mfcc_frames])]).numpy()[0]

    np.testing.assert_allclose(stream(6, 16000), whole(6, 16000), atol=1e-5)  # 6 of 8 frames, all 50 hops (100 MFCC frames)
    np.testing.assert_allclose(stream(6, 16000, hops_per_step=2), whole(6, 16000), atol=1e-5)  # most hops after the frames
    # sound that ends inside a hop: the last hop zero-padded, as the whole-clip model's waveform is
    for ended in (16000 - 3 * hop // 2, 16000 - hop + 100):  # the last hop: one of its two MFCC frames, none (100 samples)
        np.testing.assert_allclose(stream(6, ended), whole(6, ended), atol=1e-5)
    np.testing.assert_allclose(stream(8, 0), whole(8, 0), atol=1e-5)  # a video without sound
    np.testing.assert_allclose(stream(0, 16000), whole(0, 16000), atol=1e-5)  # sound without frames
    assert not np.allclose(whole(8, 0), whole(8, 16000), atol=1e-3)  # the cases differ: the check can fail


def test_interleave_gives_every_frame_and_hop_once_in_order():
    from pipeline.runtime.stream import interleave

    for frames, hops, k in [(32, 100, 4), (32, 37, 4), (6, 50, 2), (0, 7, 3), (5, 0, 3), (3, 3, 1)]:
        steps = interleave(frames, hops, k)
        assert [j for j, _, _ in steps if j is not None] == list(range(frames))
        assert [first for _, first, _ in steps] == [0] + [end for _, _, end in steps[:-1]] if steps else hops == 0
        assert (steps[-1][2] if steps else 0) == hops and all(0 <= end - first <= k for _, first, end in steps)
    assert interleave(4, 8, 4) == [(0, 0, 2), (1, 2, 4), (2, 4, 6), (3, 6, 8)]  # in proportion, not all up front
    assert interleave(2, 9, 3) == [(0, 0, 3), (1, 3, 6), (None, 6, 9)]  # what does not fit follows without frames
    with pytest.raises(ValueError, match="hops_per_step"):
        interleave(2, 2, 0)
