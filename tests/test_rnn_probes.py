"""The RNN probes measure what they claim: unrolled cells equal the Keras layers, gradients through
time vanish or explode as the cells' per-step memory factors say, and clipping bounds the update."""

import numpy as np
import pytest

from pipeline.models import rnn_probes as probes

CELLS = ["simple_rnn", "lstm", "gru"]


def test_first_steps_task_puts_the_label_in_the_first_steps():
    x, y = probes.first_steps_task(200, 30, signal_steps=3, seed=0)
    assert x.shape == (200, 30, 1) and x.dtype == np.float32 and y.shape == (200,)
    np.testing.assert_array_equal(x[:, :3, 0], np.where(y[:, None] == 1, 1.0, -1.0) * np.ones((1, 3)))
    assert 0.35 < y.mean() < 0.65
    assert abs(np.corrcoef(x[:, 3:, 0].mean(1), y)[0, 1]) < 0.2  # the rest says nothing about the label
    x_again, _ = probes.first_steps_task(200, 30, seed=0)
    np.testing.assert_array_equal(x, x_again)


@pytest.mark.parametrize("cell", CELLS)
def test_unrolled_cells_reproduce_the_keras_layers(cell):
    """The step-by-step loop the probes differentiate is the model itself, in both layers."""
    x, _ = probes.first_steps_task(4, 12, seed=1)
    model = probes.sequence_classifier(cell, 12, units=8, num_layers=2)
    probs, _ = probes.unroll(model, x)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(model(x)), atol=1e-6)
    states = probes.hidden_states(model, x)
    assert states.shape == (2, 4, 12, 8)
    assert probes.count_params(model) == model.count_params()


def test_gradients_vanish_over_100_steps_at_keras_default_initialisation():
    """||dL/dh_1|| is far below ||dL/dh_T|| for every cell, and ranks as the memory factors do:
    GRU keeps ~0.5 of its state per step, LSTM ~sigmoid(1) = 0.73, SimpleRNN ~0.85."""
    x, y = probes.first_steps_task(16, 100, seed=1)
    first, factor = {}, {}
    for cell in CELLS:
        model = probes.sequence_classifier(cell, 100)
        norms = probes.state_gradient_norms(model, x, y)
        assert norms.shape == (1, 100)
        assert norms[0, 0] < 1e-4 * norms[0, -1], cell
        first[cell], factor[cell] = norms[0, 0], probes.memory_factors(model, x).mean()
    assert factor["gru"] == pytest.approx(0.5, abs=0.03)
    assert factor["lstm"] == pytest.approx(0.73, abs=0.03)
    assert factor["gru"] < factor["lstm"] < factor["simple_rnn"] < 1
    assert first["gru"] < 1e-3 * first["lstm"]


def test_a_keep_gate_near_one_carries_the_gradient_back():
    """Setting LSTM's forget-gate bias to 3 (keep 95% per step) lifts ||dL/dh_1|| at T=100 by orders of magnitude."""
    x, y = probes.first_steps_task(16, 100, seed=1)
    default = probes.state_gradient_norms(probes.sequence_classifier("lstm", 100), x, y)[0, 0]
    kept = probes.sequence_classifier("lstm", 100, gate_bias=3.0)
    assert probes.memory_factors(kept, x).mean() == pytest.approx(0.95, abs=0.02)
    assert probes.state_gradient_norms(kept, x, y)[0, 0] > 1e4 * default
    with pytest.raises(ValueError, match="no gate"):
        probes.sequence_classifier("simple_rnn", 10, gate_bias=3.0)
    bidirectional = probes.sequence_classifier("gru", 10, units=4, bidirectional=True, gate_bias=3.0).get_layer("bi_rnn0")
    for direction in (bidirectional.forward_layer, bidirectional.backward_layer):  # GRU: input + recurrent bias rows
        np.testing.assert_allclose(np.asarray(direction.cell.bias).reshape(-1, 12).sum(0)[:4], 3.0)


def test_stacked_layers_have_one_gradient_profile_each():
    x, y = probes.first_steps_task(8, 20, seed=1)
    model = probes.sequence_classifier("gru", 20, units=8, num_layers=2)
    norms = probes.state_gradient_norms(model, x, y)
    assert norms.shape == (2, 20) and np.all(norms[:, -1] > 0)
    per_layer = probes.weight_gradient_norms(model, x, y)
    assert list(per_layer) == ["rnn0", "rnn1", "probs"] and all(v > 0 for v in per_layer.values())


def test_a_recurrent_gain_above_one_makes_gradients_explode():
    x, y = probes.first_steps_task(32, 20, seed=1)
    norms = probes.state_gradient_norms(probes.sequence_classifier("simple_rnn", 20, recurrent_gain=3.0), x, y)
    assert norms[0, 0] > 100 * norms[0, -1]


def test_clipping_bounds_every_update():
    """SGD on exploding gradients: with clipnorm each weight tensor moves at most lr x clipnorm per step;
    without it a single step moves a tensor far more."""
    x, y = probes.first_steps_task(256, 20, seed=0)
    lr, clipnorm = 0.1, 1.0
    runs = {}
    for clip in (None, clipnorm):
        model = probes.sequence_classifier("simple_rnn", 20, recurrent_gain=3.0, seed=0)
        runs[clip] = probes.train_steps(model, x, y, steps=15, learning_rate=lr, clipnorm=clip, optimizer="sgd", seed=0)
    clipped, free = runs[clipnorm], runs[None]
    assert max(clipped["grad_norm"]) > 10 * clipnorm  # the gradients did explode
    assert max(clipped["largest_variable_update"]) <= lr * clipnorm * (1 + 1e-4)
    assert max(free["largest_variable_update"]) > 10 * lr * clipnorm
    assert len(clipped["loss"]) == 15 and np.isfinite(clipped["loss"]).all()


def test_bidirectional_layer_sees_the_first_step_last():
    """A unidirectional GRU's dL/dx_1 at T=50 underflows; the backward direction of a bidirectional one reads
    x_1 last, so its gradient there is as large as at the end."""
    x, y = probes.first_steps_task(16, 50, seed=1)
    uni = probes.input_gradient_norms(probes.sequence_classifier("gru", 50), x, y)
    bi_model = probes.sequence_classifier("gru", 50, bidirectional=True)
    bi = probes.input_gradient_norms(bi_model, x, y)
    assert uni.shape == bi.shape == (50,)
    assert bi[0] > 1e4 * uni[0] and bi[0] > 0.1 * bi[-1]
    with pytest.raises(ValueError, match="input_gradient_norms"):
        probes.state_gradient_norms(bi_model, x, y)


def test_fit_accuracy_learns_a_short_dependency():
    x, y = probes.first_steps_task(256, 10, seed=0)
    x_val, y_val = probes.first_steps_task(128, 10, seed=1)
    result = probes.fit_accuracy(probes.sequence_classifier("gru", 10, units=8), x, y, x_val, y_val, epochs=4, learning_rate=0.01)
    assert len(result["val_accuracy"]) == 4 and result["final_val_accuracy"] > 0.9 and result["seconds_per_epoch"] > 0
