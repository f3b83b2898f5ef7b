"""A modality missing from a clip: the fusion gate, decode_clip's video-only path, modality dropout, `evaluate --drop`,
and a video without a sound track through predict, evaluate and the exported graph."""

import dataclasses

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.media import MediaError
from pipeline.runtime.decode import decode_clip, without_modality
from tests.conftest import FAST
from tests.media_factory import strip_audio, write_video

NO_AUDIO = "no audio track: classified from video only"


def av_config(*extra):
    return load_config(None, FAST + ["data.root=/nonexistent", *extra])


def fusion_model(fusion: str, name: str = "av_fusion"):
    from pipeline.models import ModelSpec, build_model

    cfg = av_config(f"model.name={name}", f"model.fusion={fusion}", "model.units=8", "model.dropout=0.0")
    if name == "hybrid":
        p = dataclasses.replace(cfg.preprocess, encoder="none", keep_waveform=True)
        spec = ModelSpec(num_classes=3, frames=(4, 32, 32), waveform=16000, preprocess=p)
    else:
        spec = ModelSpec(num_classes=3, frame_features=(4, 16), mfcc=(101, 20), preprocess=cfg.preprocess)
    return build_model(spec, cfg.model)


def random_inputs(model, rng, **lengths):
    """Random values for every input of `model` (batch 2); lengths given by name, else full."""
    out = {}
    for tensor in model.inputs:
        name, shape = tensor.name.split(":")[0], (2, *tensor.shape[1:])
        if name in lengths:
            out[name] = np.full(2, lengths[name], np.int32)
        elif not shape[1:]:
            out[name] = np.full(2, 16000 if name == "num_samples" else 4 if name == "frame_lengths" else 101, np.int32)
        elif tensor.dtype == "uint8":
            out[name] = rng.integers(0, 256, shape).astype(np.uint8)
        else:
            out[name] = rng.normal(size=shape).astype(np.float32)
    return out


def predict(model, inputs):
    return np.asarray(model.predict_on_batch([inputs[t.name.split(":")[0]] for t in model.inputs]))


@pytest.mark.parametrize("fusion, name, audio_length", [("mid", "av_fusion", "mfcc_length"), ("late", "av_fusion", "mfcc_length"),
                                                       ("backoff", "av_fusion", "mfcc_length"),
                                                       ("mid", "hybrid", "num_samples")])
def test_a_modality_of_length_zero_is_gated_out(fusion, name, audio_length):
    """With its length 0, a modality's values do not reach the output; with its length > 0 they do."""
    model = fusion_model(fusion, name)
    rng = np.random.default_rng(0)
    video = "frame_features" if name == "av_fusion" else "frames"
    audio = "mfcc" if name == "av_fusion" else "waveform"
    for modality, length_name, other in ((audio, audio_length, video), (video, "frame_lengths", audio)):
        a = random_inputs(model, rng, **{length_name: 0})
        b = {**a, modality: random_inputs(model, rng)[modality]}  # other values of the absent modality
        np.testing.assert_allclose(predict(model, a), predict(model, b), atol=1e-6)
        present = {**b, length_name: random_inputs(model, rng)[length_name]}
        assert np.abs(predict(model, present) - predict(model, b)).max() > 1e-4, f"{modality} present changes nothing"
        changed = {**a, other: random_inputs(model, rng)[other]}  # the remaining modality still decides
        assert np.abs(predict(model, changed) - predict(model, a)).max() > 1e-4
        assert np.isfinite(predict(model, a)).all()


@pytest.mark.parametrize("fusion, name, audio_length", [("mid", "av_fusion", "mfcc_length"), ("late", "av_fusion", "mfcc_length"),
                                                       ("backoff", "av_fusion", "mfcc_length"),
                                                       ("mid", "hybrid", "num_samples")])
def test_the_modality_loss_trains_what_evaluate_drop_feeds(fusion, name, audio_length):
    """The trainer's alone outputs are the model's output on the same clip with the other modality removed."""
    from pipeline.models.modality_losses import ModalityLossTrainer

    model = fusion_model(fusion, name)
    trainer = ModalityLossTrainer(model, 1.0)
    assert len(trainer.weights) == len(model.weights)  # shares every weight, adds none
    inputs = random_inputs(model, np.random.default_rng(1))
    fused, (video_alone, video_present), (audio_alone, audio_present) = trainer.predict_on_batch(
        [inputs[t.name.split(":")[0]] for t in model.inputs])
    np.testing.assert_allclose(fused, predict(model, inputs), atol=1e-6)
    np.testing.assert_allclose(video_alone, predict(model, {**inputs, audio_length: np.zeros(2, np.int32)}), atol=1e-6)
    np.testing.assert_allclose(audio_alone, predict(model, {**inputs, "frame_lengths": np.zeros(2, np.int32)}), atol=1e-6)
    assert not np.allclose(video_alone, audio_alone, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([video_present, audio_present], axis=1), np.ones((2, 2)))


def test_backoff_answers_with_the_fused_classifier_only_when_both_modalities_are_present():
    from pipeline.models.fusion import Backoff

    fused, video, audio = (np.full((4, 2), v, np.float32) for v in (1.0, 2.0, 3.0))
    v = np.array([[1], [1], [0], [0]], np.float32)  # clips: both, video only, audio only, neither
    a = np.array([[1], [0], [1], [0]], np.float32)
    out = np.asarray(Backoff()(fused, [video, audio], [v, a]))
    np.testing.assert_array_equal(out[:, 0], [1.0, 2.0, 3.0, 1.0])


def test_the_modality_loss_adds_each_present_modality_alone_in_training_and_validation():
    """loss = CE(fused) + w x (CE(video alone) + CE(audio alone)), a clip without a modality not counted for it; the
    validation loss too, so early stopping and the best epoch weigh the alone answers."""
    import keras

    from pipeline.models.modality_losses import ModalityLossTrainer

    model = fusion_model("mid")
    trainer = ModalityLossTrainer(model, 0.5)
    trainer.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    inputs = random_inputs(model, np.random.default_rng(2), mfcc_length=np.array([90, 0]))  # clip 1 has no sound
    x = [inputs[t.name.split(":")[0]] for t in model.inputs]
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    fused, (video_alone, _), (audio_alone, _) = trainer.predict_on_batch(x)

    def ce(p, weights=(1.0, 1.0)):  # Keras' mean over the batch of the weighted per-clip cross-entropy
        return float(np.mean(-np.log(np.sum(np.asarray(p) * y, axis=1)) * np.asarray(weights)))

    l2 = float(sum(np.sum(loss) for loss in trainer.losses))  # the kernels' L2 penalty, counted once
    expected = ce(fused) + l2 + 0.5 * (ce(video_alone) + ce(audio_alone, (1.0, 0.0)))
    got = float(trainer.compute_loss(x, y, trainer(x, training=False), training=True))
    assert got == pytest.approx(expected, rel=1e-5)
    assert float(trainer.compute_loss(x, y, trainer(x, training=False), training=False)) == pytest.approx(expected, rel=1e-5)
    assert expected > ce(fused) + l2 + 0.1
    assert ce(video_alone) > 0.1 and ce(audio_alone, (1.0, 0.0)) > 0.1  # the terms are not vanishing


def test_trainer_weights_load_into_the_model(tmp_path):
    """The best-epoch and resume checkpoints are the trainer's weights; the saved model is the inference model."""
    from pipeline.models.modality_losses import ModalityLossTrainer

    trainer = ModalityLossTrainer(fusion_model("mid"), 1.0)
    trainer.save_weights(tmp_path / "best.weights.h5")
    fresh = fusion_model("mid")
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), trainer.get_weights()))
    fresh.load_weights(tmp_path / "best.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), trainer.get_weights()))


def test_samples_to_frames_counts_no_frames_for_no_samples():
    from pipeline.features.mfcc import MFCCParams
    from pipeline.models.audio import SamplesToFrames

    for framing in ("centred", "causal"):
        params = MFCCParams.from_config(av_config(f"preprocess.mfcc_framing={framing}").preprocess)
        layer = SamplesToFrames.from_params(params, 16000)
        samples = np.array([0, 1, 159, 160, 8000, 16000], np.int32)
        assert np.asarray(layer(samples)).tolist() == [params.num_frames(int(n)) for n in samples]
        assert params.num_frames(0) == 0 and params.num_frames(160) > 0


def test_decode_clip_of_a_video_without_sound(tmp_path):
    silent = write_video(tmp_path / "silent.mp4", num_frames=20)
    short = write_video(tmp_path / "short.mp4", num_frames=20, audio_seconds=0.2)
    cfg = av_config("preprocess.keep_waveform=true")
    arrays = decode_clip(silent, cfg)
    assert arrays["warning"] == NO_AUDIO
    assert arrays["mfcc_length"] == 0 and arrays["num_samples"] == 0 and arrays["frame_lengths"].tolist() == [4]
    assert arrays["mfcc"].shape == (101, 20) and np.isfinite(arrays["mfcc"]).all() and not arrays["waveform"].any()
    short_arrays = decode_clip(short, cfg)  # sound shorter than the window: zero-padded, the padding masked
    assert "warning" not in short_arrays and 0 < short_arrays["mfcc_length"] < 40 and 3200 <= short_arrays["num_samples"] < 4000  # AAC pads to whole frames
    with pytest.raises(MediaError, match="^no audio track$"):  # a run that reads only the sound cannot use it
        decode_clip(silent, av_config("preprocess.modalities=[audio]"))


def test_without_modality_is_what_a_clip_without_it_decodes_to(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", num_frames=20, audio_seconds=0.8)
    silent = strip_audio(clip, tmp_path / "silent.mp4")
    cfg = av_config("preprocess.keep_waveform=true")
    arrays = decode_clip(clip, cfg)
    no_audio = without_modality(arrays, "audio", cfg)
    expected = decode_clip(silent, cfg)
    for name in ("frames", "frame_lengths", "mfcc", "mfcc_length", "waveform", "num_samples"):
        np.testing.assert_array_equal(no_audio[name], expected[name], err_msg=name)
    assert arrays["mfcc_length"] > 0  # the input was not changed
    no_video = without_modality(arrays, "video", cfg)
    assert not no_video["frames"].any() and no_video["frame_lengths"].tolist() == [0]
    np.testing.assert_array_equal(no_video["mfcc"], arrays["mfcc"])
    with pytest.raises(ValueError, match="modality must be one of video, audio"):
        without_modality(arrays, "depth", cfg)


def test_modality_dropout_removes_one_modality_at_the_given_rate():
    import tensorflow as tf

    from pipeline.features.augment import drop_modality

    example = {"frame_features": tf.ones([4, 16]), "frame_lengths": tf.constant(4), "mfcc": tf.ones([101, 20]),
               "mfcc_length": tf.constant(90)}
    kept = drop_modality(example, 0.0, (0, 0))
    assert all(np.array_equal(kept[k], example[k]) for k in example)
    counts = {"video": 0, "audio": 0, "none": 0}
    for k in range(400):
        out = {name: np.asarray(v) for name, v in drop_modality(example, 0.5, (0, k)).items()}
        video_gone, audio_gone = out["frame_lengths"] == 0, out["mfcc_length"] == 0
        assert not (video_gone and audio_gone)
        assert video_gone == (not out["frame_features"].any()) and audio_gone == (not out["mfcc"].any())
        counts["video" if video_gone else "audio" if audio_gone else "none"] += 1
    assert 60 <= counts["video"] <= 140 and 60 <= counts["audio"] <= 140 and 150 <= counts["none"] <= 250, counts


def test_app_side_decoding_of_a_video_without_sound(tmp_path):
    """runtime.tflite.file_inputs (no TensorFlow): silence with num_samples 0, and the warning."""
    from pipeline.runtime.tflite import file_inputs

    silent = write_video(tmp_path / "silent.mp4", num_frames=20)
    recipe = {"video": {"num_frames": 4, "frame_size": 32, "sampling": "uniform", "num_clips": 1},
              "audio": {"sample_rate": 16000, "num_samples": 16000}}
    (view,) = file_inputs(silent, recipe)
    assert view["num_samples"] == 0 and not view["waveform"].any() and view["waveform"].shape == (16000,)
    assert view["frame_lengths"] == 4 and view["warning"] == NO_AUDIO
    with pytest.raises(MediaError, match="no audio track"):
        file_inputs(silent, {"audio": recipe["audio"]})


# ----------------------------------------------------------------------------- a trained audio-visual run


@pytest.mark.slow  # the session's trained_run (~30 s, shared)
def test_evaluate_drop_feeds_the_same_graph(trained_run, dataset, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.rundir import read_json
    from pipeline.runtime.keras_model import RunModel

    clip = dataset / "Slow/v_Slow_g01_c01.mp4"
    silent = strip_audio(clip, tmp_path / "v_Slow_g01_c01.mp4")
    full, dropped = RunModel(trained_run), RunModel(trained_run, drop="audio")
    np.testing.assert_allclose(dropped.predict_clip(clip), full.predict_clip(silent), atol=1e-6)
    assert np.abs(full.predict_clip(clip) - full.predict_clip(silent)).max() > 1e-4  # the sound counted before

    assert main(["evaluate", "--run-dir", str(trained_run), "--drop", "video", "--no-progress"]) == 0
    metrics = read_json(trained_run / "eval/test-no-video/metrics.json")
    assert metrics["num_clips"] == 4 and metrics["extra"]["dropped"].startswith("video")
    assert "video dropped" in (trained_run / "eval/test-no-video/report.md").read_text()
    assert "test-no-video" in capsys.readouterr().out


@pytest.mark.slow  # the session's trained_run (~30 s, shared)
def test_a_folder_of_videos_without_sound_is_evaluated_from_video(trained_run, dataset, tmp_path, capsys):
    from pipeline.rundir import read_json
    from pipeline.stages.evaluate import evaluate

    folder = tmp_path / "muted"
    for rel in ("Fast/v_Fast_g01_c01.mp4", "Slow/v_Slow_g01_c02.mp4"):
        (folder / rel).parent.mkdir(parents=True)
        strip_audio(dataset / rel, folder / rel)
    evaluate(trained_run, data=folder, progress=False)
    err = capsys.readouterr().err
    metrics = read_json(trained_run / "eval/muted/metrics.json")
    assert metrics["num_clips"] == 2 and metrics["skipped"]["count"] == 0
    assert f"evaluate: warning: Fast/v_Fast_g01_c01.mp4: {NO_AUDIO}" in err.splitlines()
    assert metrics["extra"]["no_audio_track"].startswith("2 clip(s) classified from video only")


def test_drop_needs_an_audio_visual_run():
    from pipeline.runtime.keras_model import check_drop

    check_drop(["video", "audio"], "audio")
    check_drop(["video", "audio"], None)
    with pytest.raises(UserError, match=r"^--drop audio: this run reads video only; dropping a modality needs an audio-visual run"):
        check_drop(["video"], "audio")
    with pytest.raises(UserError, match=r"^--drop video: this run reads audio only"):
        check_drop(["audio"], "video")


@pytest.mark.slow  # three short trainings (~30 s)
def test_unimodal_first_answers_alone_as_the_single_modality_models(feature_run, dataset, tmp_path, capsys):
    """train.unimodal_first: RUN/stages/video_rnn and audio_rnn are trained first, then frozen inside the backoff model:
    with sound absent it gives the video-only model's probabilities, with frames absent the audio-only one's."""
    import os

    from pipeline.rundir import RunDir, read_json
    from pipeline.runtime.keras_model import load_trained_model
    from pipeline.stages.train import make_dataset, train
    from tests.conftest import TINY

    run = tmp_path / "run"
    run.mkdir()
    os.symlink(feature_run / "features", run / "features")
    args = FAST + [f"data.root={dataset}"] + TINY + ["model.name=av_fusion", "model.fusion=backoff", "train.unimodal_first=true",
                                                    "train.epochs=4"]
    result = train(None, run, args, progress=False)
    assert set(result["stages"]) == {"video_rnn", "audio_rnn"} and result["stages"]["video_rnn"]["epochs"] == 4
    assert "train: stage video_rnn (video alone)" in capsys.readouterr().out
    assert read_json(run / "stages/audio_rnn/train_done.json")["train_hash"]
    assert "name: video_rnn" in (run / "stages/video_rnn/config.yaml").read_text()

    fused = load_trained_model(run / "model.keras")
    assert [w.path for w in fused.trainable_weights] == ["fusion_probs/kernel", "fusion_probs/bias"]  # saved frozen, loaded frozen
    alone = {m: load_trained_model(run / f"stages/{m}_rnn/model.keras") for m in ("video", "audio")}
    names = [t.name.split(":")[0] for t in fused.inputs]
    inputs, _ = next(iter(make_dataset(run, RunDir(run).read_index(), "train", RunDir(run).config(), names)))
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    both = predict(fused, inputs)
    for modality, kept, dropped in (("video", "frame_lengths", "mfcc_length"), ("audio", "mfcc_length", "frame_lengths")):
        rows = inputs[kept] > 0  # (a clip without a sound track has neither left: the fused classifier answers on zeros)
        assert rows.sum() >= 2
        single = predict(alone[modality], inputs)[rows]
        np.testing.assert_allclose(predict(fused, {**inputs, dropped: np.zeros_like(inputs[dropped])})[rows], single, atol=1e-5)
        assert np.abs(both[rows] - single).max() > 1e-3  # with both, the fused classifier answers
    # a second run reuses every stage: nothing is trained again
    assert train(None, run, args, progress=False)["epochs"] == result["epochs"]
    assert "already trained" in capsys.readouterr().out
