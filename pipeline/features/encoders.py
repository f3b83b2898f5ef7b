"""CNN frame encoders: uint8 RGB frames -> one feature vector per frame.

    frames: uint8 [B, S, S, 3] --(cast, per-encoder preprocessing, CNN, global average pool)--> float32 [B, D]

Each encoder is a Keras model whose first layers do its own input preprocessing, so the
same graph runs in preprocessing, inside the hybrid model and inside the exported TFLite
file. A frozen encoder can run through the TFLite interpreter (LiteRT's, with XNNPACK), which on these
CPUs is ~8x faster than Keras for the same weights (measured: ../shared/DESIGN.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from pipeline.errors import UserError
from pipeline.features.motion import BLUR, DIRECTIONS, FLOW_PRIOR, LUMA, MOTION_DIM, STRIPS, direction_vectors
from pipeline.files import atomic_write_bytes


@dataclass(frozen=True)
class EncoderSpec:
    build: Callable[..., keras.Model]  # keras.applications constructor
    scale: float  # pixel preprocessing: x * scale + offset (the application's preprocess_input)
    offset: float
    min_size: int


def _mobilenet_v3(constructor):
    # MobileNetV3 has its own Rescaling inside (include_preprocessing=True): feed 0..255.
    def build(input_shape, weights):
        return constructor(input_shape=input_shape, include_top=False, weights=weights, pooling="avg", include_preprocessing=True)

    return build


def _application(constructor):
    def build(input_shape, weights):
        return constructor(input_shape=input_shape, include_top=False, weights=weights, pooling="avg")

    return build


ENCODERS: dict[str, EncoderSpec] = {
    "mobilenet_v3_small": EncoderSpec(_mobilenet_v3(keras.applications.MobileNetV3Small), 1.0, 0.0, 32),
    "mobilenet_v3_large": EncoderSpec(_mobilenet_v3(keras.applications.MobileNetV3Large), 1.0, 0.0, 32),
    "mobilenet_v2": EncoderSpec(_application(keras.applications.MobileNetV2), 1 / 127.5, -1.0, 32),
    # EfficientNet rescales and normalises inside the application: feed 0..255.
    "efficientnet_b0": EncoderSpec(_application(keras.applications.EfficientNetB0), 1.0, 0.0, 32),
    "inception_v3": EncoderSpec(_application(keras.applications.InceptionV3), 1 / 127.5, -1.0, 75),
}


def small_cnn(input_shape: tuple[int, int, int], width: int = 16) -> keras.Model:
    """A small CNN for CPUs and tests: four stride-2 conv blocks, then a coarse (about 4x4) grid of features.

    Keeping a coarse grid (instead of global pooling) keeps where things are in the frame,
    which matters for poses when the encoder is not trained. D = grid * grid * 2 * width.
    """
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for i, filters in enumerate((width, width, 2 * width, 2 * width)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
    pool = math.ceil(x.shape[1] / 4)  # average pooling to a ~4x4 grid (AREA resize is not a TFLite builtin)
    x = keras.layers.AveragePooling2D(pool, strides=pool, padding="same", name="grid")(x)
    outputs = keras.layers.Flatten()(x)
    return keras.Model(inputs, outputs, name="small_cnn")


FRAME_ENCODER_WEIGHTS = "frame_encoder.weights.h5"  # the CNN a hybrid run trained, saved by `actrec train` in its run dir


def check_encoder_weights(name: str, weights: str | None) -> None:
    """One-line errors for preprocess.weights, raised before any work (encoder `none`: the hybrid's small_cnn)."""
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        made_by = "; `actrec train` of a hybrid run writes it" if Path(weights).name == FRAME_ENCODER_WEIGHTS else ""
        raise UserError(f"preprocess.weights: file {weights} not found (expected 'imagenet', a .weights.h5 path, or null{made_by})")
    if weights == "imagenet" and name in ("small_cnn", "none"):
        raise UserError("preprocess.weights: small_cnn has no ImageNet weights; use null or a .weights.h5 file")
    if weights is not None and name == "motion":
        raise UserError("preprocess.weights: the motion encoder has no weights; use null")


def build_encoder(name: str, image_size: int, weights: str | None = None, seed: int = 0) -> keras.Model:
    """The frame encoder `name` as a Keras model: uint8/float [B, S, S, 3] in 0..255 -> float32 [B, D].

    weights: 'imagenet' (downloaded by Keras once, needs the network), a path to a
    .weights.h5 file saved from this same encoder, or None (seeded random init).
    """
    if name not in ENCODERS and name != "small_cnn":
        known = ", ".join([*ENCODERS, "small_cnn", "none"])
        raise UserError(f"preprocess.encoder: unknown encoder {name!r}; known: {known}")
    check_encoder_weights(name, weights)
    input_shape = (image_size, image_size, 3)
    keras.utils.set_random_seed(seed)  # a random-init encoder must be the same in every stage
    if name == "small_cnn":
        backbone = small_cnn(input_shape)
    else:
        spec = ENCODERS[name]
        if image_size < spec.min_size:
            raise UserError(f"preprocess.image_size: {name} needs at least {spec.min_size} pixels, got {image_size}")
        backbone = spec.build(input_shape, "imagenet" if weights == "imagenet" else None)

    frames = keras.Input(input_shape, dtype="uint8", name="frames")
    x = _ToFloat(name="to_float")(frames)
    if name in ENCODERS and (ENCODERS[name].scale, ENCODERS[name].offset) != (1.0, 0.0):
        x = keras.layers.Rescaling(ENCODERS[name].scale, offset=ENCODERS[name].offset, name="preprocess")(x)
    features = backbone(x)
    encoder = keras.Model(frames, features, name=f"encoder_{name}")
    if weights not in (None, "imagenet"):
        try:
            encoder.load_weights(weights)
        except Exception as e:  # Keras raises several types for shape/format mismatches
            raise UserError(f"preprocess.weights: cannot load {weights} into {name} at {image_size}px ({str(e).splitlines()[0][:150]})") from None
    return encoder


@keras.saving.register_keras_serializable(package="actrec")
class _ToFloat(keras.layers.Layer):
    """uint8 pixels -> float32 0..255 (a layer, so uint8 stays the model's input type)."""

    def call(self, x):
        return keras.ops.cast(x, "float32")


@keras.saving.register_keras_serializable(package="actrec")
class FrameDifference(keras.layers.Layer):
    """uint8 frames [B, T, S, S, 3] -> uint8 [B, T, S, S, 3]: (frame_t - frame_t-1) // 2 + 128, and 128 (no change) at t = 0.

    The RGB difference of Temporal Segment Networks: a static background and the actor's colours cancel,
    what moved remains. It stays uint8 (mid-grey = no change) so any frame encoder takes it as it
    takes frames, and its values are exact integers: the same in Keras, SavedModel and TFLite.
    """

    def call(self, frames):
        # Float arithmetic on integer values (exact): TFLite would store integer scalars broadcast to the
        # frames' shape as [1, T, S, S, 3] int32 constants. PAD gives "no change" at t = 0 without a zeros constant.
        pixels = keras.ops.cast(frames, "float32")
        change = keras.ops.pad(pixels[:, 1:] - pixels[:, :-1], [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
        return keras.ops.cast(keras.ops.floor(change * 0.5) + 128.0, "uint8")

    def compute_output_spec(self, frames):
        return keras.KerasTensor(frames.shape, dtype="uint8")


@keras.saving.register_keras_serializable(package="actrec")
class MotionFeatures(keras.layers.Layer):
    """uint8 frames [B, T, S, S, 3] -> float32 [B, T, MOTION_DIM]: the `motion` encoder in-graph.

    The same arithmetic as the numpy reference `pipeline.features.motion.motion_features` (see its
    docstring), from ops that are TFLite builtins: MIRROR_PAD, CONV_2D for the blur, slices, RELU, LOG.
    """

    def call(self, frames):
        t, s = frames.shape[1], frames.shape[2]
        grey = ops.reshape(ops.matmul(ops.cast(frames, "float32"), LUMA[:, None]), (-1, s, s, 1))  # [B*T, S, S, 1]
        grey = ops.pad(grey, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="reflect")
        grey = ops.conv(grey, BLUR.reshape(5, 1, 1, 1), padding="valid")
        grey = ops.reshape(ops.conv(grey, BLUR.reshape(1, 5, 1, 1), padding="valid"), (-1, t, s, s))
        it = grey[:, 1:] - grey[:, :-1]
        mean = ops.reshape(0.5 * (grey[:, 1:] + grey[:, :-1]), (-1, s, s, 1))
        padded = ops.pad(mean, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
        ix = ops.reshape(0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]), (-1, t - 1, s, s))
        iy = ops.reshape(0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]), (-1, t - 1, s, s))

        def strip_sum(x):  # [B, T-1, S, S] -> [B, T-1, STRIPS]
            return ops.sum(ops.reshape(x, (-1, t - 1, STRIPS, (s // STRIPS) * s)), -1)

        gradient = ix * ix + iy * iy
        support = strip_sum(gradient + FLOW_PRIOR)
        u, v = strip_sum(-it * ix) / support, strip_sum(-it * iy) / support
        energy = ops.log1p(strip_sum(ops.abs(it)) / (s * s / STRIPS))
        wx, wy = -it * ix / (gradient + FLOW_PRIOR), -it * iy / (gradient + FLOW_PRIOR)
        d = direction_vectors()
        flow = [ops.log1p(strip_sum(ops.relu(wx * float(d[0, k]) + wy * float(d[1, k])))) for k in range(DIRECTIONS)]
        per_strip = ops.stack([u, v, energy, *flow], -1)  # [B, T-1, STRIPS, 3 + DIRECTIONS]
        out = ops.reshape(per_strip, (-1, t - 1, MOTION_DIM))
        return ops.pad(out, [[0, 0], [1, 0], [0, 0]])  # frame 0: zeros

    def compute_output_spec(self, frames):
        return keras.KerasTensor((frames.shape[0], frames.shape[1], MOTION_DIM), dtype="float32")


def feature_dim(encoder: keras.Model) -> int:
    return int(encoder.output.shape[-1])


class FrameEncoder:
    """Encode frames in batches with a frozen encoder, through TFLite (default) or Keras.

    encode(frames: uint8 [N, S, S, 3]) -> float32 [N, D]
    """

    def __init__(self, encoder: keras.Model, backend: str = "tflite", batch_size: int = 64, threads: int | None = None):
        self.encoder = encoder
        self.backend = backend
        self.batch_size = batch_size
        self.dim = feature_dim(encoder)
        if backend == "tflite":
            from ai_edge_litert.interpreter import Interpreter  # LiteRT: TensorFlow only converts

            content = cached_tflite(encoder)
            self.interpreter = Interpreter(model_content=content, num_threads=threads or os.cpu_count())
            self._batch = 0
        elif backend != "keras":
            raise UserError(f"preprocess.encoder_backend: unknown backend {backend!r}; expected tflite or keras")

    def encode(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = [self._encode_batch(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        return np.concatenate(out)[: len(frames)].astype(np.float32)

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:
        if self.backend == "keras":
            return np.asarray(self.encoder(batch, training=False))
        inp = self.interpreter.get_input_details()[0]
        if len(batch) < self._batch:  # pad a short last batch: re-planning the graph costs more than the padding
            batch = np.concatenate([batch, np.zeros((self._batch - len(batch), *batch.shape[1:]), batch.dtype)])
        if self._batch != len(batch):  # resizing re-plans the graph: only when the batch size changes
            self.interpreter.resize_tensor_input(inp["index"], batch.shape)
            self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(inp["index"], batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.interpreter.get_output_details()[0]["index"])


def cache_dir() -> Path:
    """Where converted encoders are kept between runs: $ACTREC_CACHE or ~/.cache/actrec."""
    return Path(os.environ.get("ACTREC_CACHE", Path.home() / ".cache" / "actrec"))


def cached_tflite(encoder: keras.Model) -> bytes:
    """The encoder's TFLite flatbuffer, converted once per (architecture, input, weights) and cached.

    Conversion takes ~10 s for MobileNetV3; the key hashes the weights themselves, so a
    retrained or differently seeded encoder never reuses a stale file.
    """
    digest = hashlib.sha256(f"{encoder.name}{encoder.input_shape}{tf.__version__}".encode())
    for weight in encoder.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    path = cache_dir() / "encoders" / f"{encoder.name}-{digest.hexdigest()[:20]}.tflite"
    if path.is_file():
        return path.read_bytes()
    content = encoder_to_tflite(encoder)
    try:
        atomic_write_bytes(path, content)
    except OSError:  # a read-only home: convert every time rather than fail
        pass
    return content


def encoder_to_tflite(encoder: keras.Model) -> bytes:
    """Float32 TFLite flatbuffer of a frame encoder with a dynamic batch (CNNs convert with any batch)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(encoder)
    with quiet_converter():
        return converter.convert()


@contextlib.contextmanager
def quiet_converter():
    """Silence what the TFLite converter prints (its SavedModel signature on stdout, absl notes on
    stderr); a failure still raises with its message."""
    stderr_fd = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
