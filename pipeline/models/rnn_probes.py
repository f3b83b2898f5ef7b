"""Probes that measure what RNN textbooks state, on toy sequences: hidden states, gradients through
time (BPTT), exploding gradients and clipping. No file I/O: benchmarks/rnn_cells.py and
notebooks/02_rnn_fundamentals.ipynb record and plot what these return.

    x, y = first_steps_task(n, steps)            x: float32 [N, T, 1], y: int [N]
    model = sequence_classifier("lstm", steps)   [B, T, D] -> probabilities [B, C]
    unroll(model, x)                             the forward pass as a Python loop over the cells
    hidden_states(model, x)                      h: float32 [L, B, T, H]   (the state after every step)
    memory_factors(model, x)                     float32 [B, T, H]  the fraction of the old state each step keeps
    state_gradient_norms(model, x, y)            float [L, T]   ||dL/dh_t||, mean over the batch
    input_gradient_norms(model, x, y)            float [T]      ||dL/dx_t|| (any model, bidirectional too)
    weight_gradient_norms(model, x, y)           {layer: ||dL/dW||}  per-layer gradient norms
    train_steps(model, x, y, ...)                per-step loss, gradient norm and update norm, clipping on/off
    fit_accuracy(model, x, y, x_val, y_val)      Keras fit with actrec's optimiser defaults: accuracy per epoch

The cells and their initialisers are the ones `pipeline.models.heads.rnn_head` uses (Keras' defaults:
Glorot-uniform input kernels, orthogonal recurrent kernels, unit forget-gate bias for LSTM), read
from the same `CELLS` table, so what is measured here is what the pipeline's heads start from.
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import layers

from pipeline.models.heads import CELLS


def first_steps_task(num_sequences: int, steps: int, signal_steps: int = 3, noise: float = 1.0, seed: int = 0):
    """A binary task whose answer sits at the start of a long sequence.

    The first `signal_steps` steps are all +1 (label 1) or all -1 (label 0); every later step is
    Gaussian noise (std `noise`) that says nothing about the label. To answer at step T the model
    must carry the first steps' information through T - signal_steps noisy updates, and to learn
    that, the loss gradient must reach back to step 1.

    Returns x: float32 [N, T, 1] and y: int64 [N] (balanced in expectation).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, num_sequences)
    x = noise * rng.normal(size=(num_sequences, steps, 1))
    x[:, :signal_steps, 0] = np.where(y[:, None] == 1, 1.0, -1.0)
    return x.astype("float32"), y


def sequence_classifier(
    cell: str,
    steps: int,
    features: int = 1,
    units: int = 32,
    num_layers: int = 1,
    bidirectional: bool = False,
    num_classes: int = 2,
    recurrent_gain: float = 1.0,
    gate_bias: float | None = None,
    seed: int = 0,
) -> keras.Model:
    """Stacked RNN layers named rnn0, rnn1, ... -> last state -> softmax layer `probs`.

    x: float32 [B, T, D] -> probabilities float32 [B, C]. Like `rnn_head` with `pooling: last`, no
    padding mask (toy sequences have none) and no dropout, so the gradients are the cells' own.
    `recurrent_gain` scales the orthogonal recurrent kernel (1.0 = Keras' default): > 1 makes the
    state grow step after step, the classic set-up for exploding gradients. `gate_bias` sets the bias of the gate that decides
    how much of the old state a step keeps -- LSTM's forget gate, GRU's update gate -- in every layer
    (None = Keras' default: 1 for LSTM's forget gate, 0 for GRU's update gate); sigmoid(3) = 0.95.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((steps, features), name="x")
    h = inputs
    for i in range(num_layers):
        rnn = CELLS[cell](units, return_sequences=i < num_layers - 1, name=f"rnn{i}",
                          recurrent_initializer=keras.initializers.Orthogonal(gain=recurrent_gain))
        if bidirectional:
            rnn = layers.Bidirectional(rnn, name=f"bi_rnn{i}")
        h = rnn(h)
    probs = layers.Dense(num_classes, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, probs, name=f"{'bi' if bidirectional else ''}{cell}_T{steps}")
    if gate_bias is not None:
        set_gate_bias(model, gate_bias)
    return model


def set_gate_bias(model: keras.Model, value: float) -> None:
    """Set LSTM forget-gate / GRU update-gate biases of every RNN layer (Keras' gate orders: LSTM
    input, forget, candidate, output; GRU update, reset, candidate, with an input and a recurrent bias row)."""
    rnns = []
    for layer in model.layers:
        if isinstance(layer, layers.Bidirectional):
            rnns += [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, layers.RNN):
            rnns.append(layer)
    for rnn in rnns:
        cell, units = rnn.cell, rnn.cell.units
        bias = np.asarray(cell.bias).copy()
        if isinstance(cell, layers.LSTMCell):
            bias[units:2 * units] = value
        elif isinstance(cell, layers.GRUCell):
            bias = bias.reshape(-1, 3 * units)
            bias[:, :units] = 0.0
            bias[0, :units] = value  # the two rows are added: their sum is the gate's bias
            bias = bias.reshape(np.shape(cell.bias))
        else:
            raise ValueError(f"{rnn.name}: a SimpleRNN has no gate")
        cell.bias.assign(bias)


def recurrent_layers(model: keras.Model) -> list:
    """The RNN layers of a `sequence_classifier`, first to last (unidirectional models only)."""
    found = [layer for layer in model.layers if isinstance(layer, layers.RNN)]
    if not found:
        raise ValueError(f"{model.name}: no unidirectional RNN layers (state probes unroll rnn0, rnn1, ...; use input_gradient_norms for bidirectional models)")
    return found


def count_params(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# ----------------------------------------------------------------------------- unrolled forward pass


def unroll(model: keras.Model, x):
    """The model's forward pass one step at a time, keeping every hidden state.

    x: float32 [B, T, D] -> (probs float32 [B, C], states: list over layers of lists over time of h_t [B, H]).
    Calls each layer's own cell with its own weights, so `probs` equals `model(x)` (tested); the
    per-step tensors are what lets a GradientTape give dL/dh_t for every t.
    """
    import tensorflow as tf

    rnns = recurrent_layers(model)
    x = tf.convert_to_tensor(x)
    batch, steps = int(x.shape[0]), int(x.shape[1])
    carried = [list(rnn.cell.get_initial_state(batch)) for rnn in rnns]  # LSTM carries [h, c], GRU/SimpleRNN [h]
    states = [[] for _ in rnns]
    for t in range(steps):
        h = x[:, t]
        for i, rnn in enumerate(rnns):
            h, new = rnn.cell(h, carried[i], training=False)
            carried[i] = list(new) if isinstance(new, (list, tuple)) else [new]
            states[i].append(h)
    return model.get_layer("probs")(h), states


def hidden_states(model: keras.Model, x) -> np.ndarray:
    """h_t after every step of every layer: x float32 [B, T, D] -> float32 [L, B, T, H]."""
    _, states = unroll(model, x)
    return np.stack([np.stack([np.asarray(h) for h in layer], axis=1) for layer in states])


def memory_factors(model: keras.Model, x) -> np.ndarray:
    """How much of the previous state each step passes on, per unit, in the first RNN layer: float32 [B, T, H].

    The factor by which dL/dh_t shrinks or grows per step back in time, besides the recurrent matrix:
        LSTM:       the forget gate f_t = sigmoid(x_t W_f + h_{t-1} U_f + b_f)   (c_t = f_t c_{t-1} + ...)
        GRU:        the update gate z_t = sigmoid(x_t W_z + h_{t-1} U_z + b_z)   (Keras: h_t = z_t h_{t-1} + (1 - z_t) h~_t)
        SimpleRNN:  tanh'(a_t) = 1 - h_t^2, times the orthogonal (norm-preserving) recurrent kernel
    Their product over T steps is roughly how much of the loss's gradient reaches step 1.
    """
    cell = recurrent_layers(model)[0].cell
    units = cell.units
    h = hidden_states(model, x)[0]  # [B, T, H]
    if isinstance(cell, layers.SimpleRNNCell):  # tanh' of the pre-activation, from the output tanh(a_t) itself
        return 1.0 - h**2
    previous = np.concatenate([np.zeros_like(h[:, :1]), h[:, :-1]], axis=1)  # h_{t-1}, with h_0 = 0
    kernel, recurrent, bias = (np.asarray(w) for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    if isinstance(cell, layers.LSTMCell):  # Keras' gate order: input, forget, candidate, output
        gate = slice(units, 2 * units)
        pre = np.asarray(x) @ kernel[:, gate] + previous @ recurrent[:, gate] + bias[gate]
    else:  # GRUCell, gate order: update, reset, candidate; reset_after keeps an input and a recurrent bias
        gate = slice(0, units)
        biases = bias.reshape(-1, 3 * units).sum(axis=0)
        pre = np.asarray(x) @ kernel[:, gate] + previous @ recurrent[:, gate] + biases[gate]
    return 1.0 / (1.0 + np.exp(-pre))


def _loss(y, probs):
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, probs))


def state_gradient_norms(model: keras.Model, x, y) -> np.ndarray:
    """||dL/dh_t|| for every layer and step, averaged over the batch: float64 [L, T].

    BPTT in one picture: dL/dh_t = dL/dh_T . prod_{s>t} dh_s/dh_{s-1}, so the norm at step t says how
    much of the loss's signal reaches t. A norm that falls geometrically with T - t is a vanishing
    gradient; one that grows is an exploding gradient. x: float32 [B, T, D], y: int [B].
    """
    import tensorflow as tf

    with tf.GradientTape() as tape:
        probs, states = unroll(model, x)
        loss = _loss(y, probs)
    flat = [h for layer in states for h in layer]
    grads = tape.gradient(loss, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    norms = np.array([float(tf.reduce_mean(tf.norm(g, axis=-1))) for g in grads])
    return norms.reshape(len(states), -1)


def input_gradient_norms(model: keras.Model, x, y) -> np.ndarray:
    """||dL/dx_t|| per step, averaged over the batch: float64 [T]. Works for any model (bidirectional too).

    x: float32 [B, T, D], y: int [B]. dL/dx_t = dL/dh_t . dh_t/dx_t: how strongly step t's input can
    change the loss, which is what the model can learn from step t.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(y, model(x, training=False))
    return tf.reduce_mean(tf.norm(tape.gradient(loss, x), axis=-1), axis=0).numpy().astype("float64")


def weight_gradient_norms(model: keras.Model, x, y) -> dict[str, float]:
    """Per-layer gradient norms: {layer name: ||dL/dW|| over all that layer's weights}."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = _loss(y, model(x, training=False))
    grads = tape.gradient(loss, model.trainable_weights)
    squared = {id(v): float(tf.reduce_sum(tf.square(g))) for v, g in zip(model.trainable_weights, grads)}
    norms = {}
    for layer in model.layers:
        if layer.trainable_weights:
            norms[layer.name] = float(np.sqrt(sum(squared[id(v)] for v in layer.trainable_weights)))
    return norms


# ----------------------------------------------------------------------------- training


def train_steps(
    model: keras.Model,
    x,
    y,
    steps: int = 50,
    batch_size: int = 64,
    learning_rate: float = 0.01,
    clipnorm: float | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
) -> dict:
    """A plain training loop that records what clipping changes, step by step.

    x: float32 [N, T, D], y: int [N]; `steps` mini-batches drawn with `seed`. `clipnorm` clips each
    weight tensor's gradient to that L2 norm before the update (Keras' `clipnorm`, as
    `train.clipnorm` does in `actrec train`); None trains without clipping.

    Returns lists over steps: `loss`, `grad_norm` (global gradient norm before clipping),
    `update_norm` (||w_after - w_before|| over all weights), `largest_variable_update` (the largest
    single weight tensor's update norm: with SGD and clipping it is at most learning_rate x clipnorm),
    plus `accuracy` on (x, y) after training (NaN if the weights became non-finite) and `seconds`.
    """
    import tensorflow as tf

    make = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[optimizer]
    opt = make(learning_rate, **({"clipnorm": clipnorm} if clipnorm else {}))
    weights = model.trainable_weights

    @tf.function(autograph=False)  # no Python control flow on tensors: nothing to convert
    def step(xb, yb):
        before = [tf.identity(w) for w in weights]
        with tf.GradientTape() as tape:
            loss = _loss(yb, model(xb, training=True))
        grads = tape.gradient(loss, weights)
        opt.apply_gradients(zip(grads, weights))
        updates = [tf.norm(w - b) for w, b in zip(weights, before)]
        return loss, tf.linalg.global_norm(grads), tf.sqrt(tf.add_n([u * u for u in updates])), tf.reduce_max(tf.stack(updates))

    rng = np.random.default_rng(seed)
    history = {"loss": [], "grad_norm": [], "update_norm": [], "largest_variable_update": []}
    start = time.perf_counter()
    for _ in range(steps):
        batch = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        values = step(tf.constant(x[batch]), tf.constant(y[batch]))
        for key, value in zip(history, values):
            history[key].append(float(value))
    history["seconds"] = time.perf_counter() - start
    history["accuracy"] = accuracy(model, x, y)
    return history


def accuracy(model: keras.Model, x, y, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on (x, y); NaN when the model outputs non-finite probabilities."""
    probs = np.concatenate([np.asarray(model(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)])
    if not np.all(np.isfinite(probs)):
        return float("nan")
    return float(np.mean(np.argmax(probs, -1) == y))


class EpochTimes(keras.callbacks.Callback):
    """Wall time of every epoch (the first one includes graph tracing)."""

    def on_train_begin(self, logs=None):
        self.times, self.last = [], time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def fit_accuracy(model: keras.Model, x, y, x_val, y_val, epochs: int = 10, learning_rate: float = 3e-3,
                 clipnorm: float = 1.0, batch_size: int = 32) -> dict:
    """Train with Adam + clipnorm (actrec's defaults) through `model.fit`.

    x: float32 [N, T, D], y: int [N] (and the validation pair). Returns {'val_accuracy': [per epoch],
    'final_val_accuracy', 'seconds_per_epoch' (median of the epochs after the first, which traces the graph)}.
    """
    model.compile(keras.optimizers.Adam(learning_rate, clipnorm=clipnorm), "sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimes()
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=(x_val, y_val), callbacks=[timer], verbose=0)
    val = [float(a) for a in history.history["val_accuracy"]]
    return {"val_accuracy": val, "final_val_accuracy": val[-1], "seconds_per_epoch": float(np.median(timer.times[1:] or timer.times))}
