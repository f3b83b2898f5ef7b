"""RNN heads, fusion and the registry: masking, shapes, errors, learning on a learnable toy."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.models import ModelSpec, build_model


def model_cfg(*overrides):
    return load_config(None, list(overrides)).model


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_is_ignored(cell, pooling, bidirectional):
    """The output for a padded sequence equals the output for the same sequence unpadded."""
    cfg = model_cfg("model.name=video_rnn", f"model.cell={cell}", f"model.pooling={pooling}",
                    f"model.bidirectional={bidirectional}", "model.num_layers=2", "model.units=8")
    padded_model = build_model(ModelSpec(num_classes=4, frame_features=(9, 6)), cfg)
    short_model = build_model(ModelSpec(num_classes=4, frame_features=(5, 6)), cfg)
    short_model.set_weights(padded_model.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 9, 6)).astype("float32")
    x[:, 5:] = 7.0  # garbage in the padding
    padded = padded_model({"frame_features": x, "frame_lengths": np.array([5, 5])})
    short = short_model({"frame_features": x[:, :5], "frame_lengths": np.array([5, 5])})
    np.testing.assert_allclose(np.asarray(padded), np.asarray(short), atol=1e-6)


def test_registry_and_shapes():
    spec = ModelSpec(num_classes=3, frame_features=(8, 16), mfcc=(50, 13))
    for name in ("video_rnn", "audio_rnn", "av_fusion"):
        for fusion in ("late", "mid"):
            model = build_model(spec, model_cfg(f"model.name={name}", f"model.fusion={fusion}", "model.units=8"))
            inputs = {"frame_features": np.zeros((2, 8, 16), "float32"), "frame_lengths": np.array([8, 3]),
                      "mfcc": np.random.default_rng(0).normal(size=(2, 50, 13)).astype("float32"), "mfcc_length": np.array([50, 20])}
            probs = np.asarray(model({k: v for k, v in inputs.items() if k in [t.name.split(":")[0] for t in model.inputs]}))
            assert probs.shape == (2, 3)
            np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_missing_features_are_one_line_errors():
    with pytest.raises(UserError, match="model.name=av_fusion needs cached 'mfcc'.*actrec preprocess"):
        build_model(ModelSpec(num_classes=3, frame_features=(8, 16)), model_cfg("model.name=av_fusion"))


def test_bidirectional_concat_doubles_units():
    cfg = model_cfg("model.name=video_rnn", "model.units=8", "model.pooling=last")
    model = build_model(ModelSpec(num_classes=3, frame_features=(4, 5)), cfg)
    assert model.get_layer("video_bigru0").output.shape[-1] == 16


def test_learns_order_dependent_task():
    """Label = whether the rising half comes first: needs order, so above chance proves the RNN learns."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, t = 256, 10
    y = rng.integers(0, 2, n)
    ramp = np.linspace(-1, 1, t)
    signal = np.where(y[:, None] == 1, ramp, ramp[::-1])[..., None]
    x = np.concatenate([signal, -signal, np.zeros_like(signal)], -1) + 0.3 * rng.normal(size=(n, t, 3))
    lengths = np.full(n, t)
    cfg = model_cfg("model.name=video_rnn", "model.units=8", "model.dropout=0.0")
    model = build_model(ModelSpec(num_classes=2, frame_features=(t, 3)), cfg)
    model.compile(keras.optimizers.Adam(1e-2, clipnorm=1.0), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit({"frame_features": x[:192].astype("float32"), "frame_lengths": lengths[:192]}, y[:192], epochs=8, batch_size=32, verbose=0)
    _, accuracy = model.evaluate({"frame_features": x[192:].astype("float32"), "frame_lengths": lengths[192:]}, y[192:], verbose=0)
    assert accuracy > 0.9


def test_stack_steps_values_and_lengths():
    """k frames per step: [B, T, C] -> [B, ceil(T/k), k*C], frame order kept, lengths rounded up."""
    from pipeline.models.heads import StackSteps

    x = np.arange(2 * 7 * 3, dtype="float32").reshape(2, 7, 3)
    stacked, lengths = StackSteps(3)(x, np.array([7, 4]))
    stacked = np.asarray(stacked)
    assert stacked.shape == (2, 3, 9)
    np.testing.assert_array_equal(stacked[0, 1], x[0, 3:6].reshape(-1))  # frames 3, 4, 5 side by side
    np.testing.assert_array_equal(stacked[0, 2], np.concatenate([x[0, 6], np.zeros(6)]))  # zero-padded tail
    np.testing.assert_array_equal(np.asarray(lengths), [3, 2])


def test_audio_stack_shortens_the_audio_rnn_and_still_masks():
    """model.audio_stack=4: the audio GRU runs ceil(F/4) steps; padding past the length still changes nothing."""
    cfg = model_cfg("model.name=audio_rnn", "model.units=8", "model.audio_stack=4")
    model = build_model(ModelSpec(num_classes=3, mfcc=(50, 13)), cfg)
    assert model.get_layer("audio_bigru0").output.shape[1] == 13
    rng = np.random.default_rng(0)
    mfcc = rng.normal(size=(1, 50, 13)).astype("float32")
    noisy = mfcc.copy()
    noisy[:, 40:] = 5.0  # frames 40+ are past the length: steps 10+ are masked
    a = model({"mfcc": mfcc, "mfcc_length": np.array([40])})
    b = model({"mfcc": noisy, "mfcc_length": np.array([40])})
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_freq_conv_adds_band_features_per_frame_and_zeroes_padding(tmp_path):
    """model.freq_conv=8: each frame's 13 MFCCs -> + ceil(ceil(40 / 2) / 2) x 8 = 80 band features; frames past the
    length are zero, each frame's output depends on that frame alone, and the layer survives a save and load."""
    import keras

    cfg = model_cfg("model.name=audio_rnn", "model.units=8", "model.freq_conv=8", "model.audio_stack=2")
    model = build_model(ModelSpec(num_classes=3, mfcc=(20, 13)), cfg)
    layer = model.get_layer("audio_freq_conv")
    rng = np.random.default_rng(0)
    mfcc = rng.normal(size=(2, 20, 13)).astype("float32")
    mask = np.arange(20)[None] < np.array([[20], [12]])
    out = np.asarray(layer(mfcc, mask))
    assert out.shape == (2, 20, 13 + 80)
    np.testing.assert_allclose(out[..., :13] * mask[..., None], out[..., :13])  # the MFCCs pass through (zeroed past the length)
    assert np.all(out[1, 12:] == 0) and np.abs(out[1, :12, 13:]).max() > 0
    changed = mfcc.copy()
    changed[:, 5] += 3.0  # one frame changed: only its own output moves
    moved = np.abs(np.asarray(layer(changed, mask)) - out).max(axis=(0, 2))
    assert moved[5] > 0 and np.all(np.delete(moved, 5) == 0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    inputs = {"mfcc": mfcc, "mfcc_length": np.array([20, 12])}
    np.testing.assert_allclose(np.asarray(loaded(inputs)), np.asarray(model(inputs)), atol=1e-6)


def test_max_pooling_takes_each_units_peak_over_the_valid_steps_only():
    from pipeline.models.heads import MaskedMax

    states = np.array([[[1.0, -3.0], [4.0, -2.0], [9.0, 9.0]], [[-1.0, -5.0], [0.0, 0.0], [0.0, 0.0]]], "float32")  # [2, 3, 2]
    mask = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_allclose(np.asarray(MaskedMax()(states, mask)), [[4.0, -2.0], [-1.0, -5.0]])  # not 9 (padding), not 0
    np.testing.assert_allclose(np.asarray(MaskedMax()(states, np.zeros((2, 3), bool))), np.zeros((2, 2)))  # nothing valid: zeros


def test_layers_with_sublayers_load_frozen_when_saved_frozen(tmp_path):
    """A frozen model (train.unimodal_first freezes its stages) comes back frozen: the freq-conv and attention layers'
    own Conv2D / Dense sublayers too, so a loaded model does not train, or build optimizer state for, them."""
    import keras

    cfg = model_cfg("model.name=audio_rnn", "model.units=8", "model.freq_conv=8", "model.pooling=attention")
    model = build_model(ModelSpec(num_classes=3, mfcc=(20, 13)), cfg)
    for layer in model.layers:
        layer.trainable = False
    assert model.trainable_weights == []
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").trainable_weights == []
