"""Export stage: a trained run -> DIR/export/, the files an app ships, with measured parity.

The deployable graph takes what a phone has and contains every transform after decoding:

    frames        uint8   [1, T, S, S, 3]  --frame encoder (the run's CNN)----> [1, T, D] --┐
    frame_lengths int32   [1]              --mask of valid frames----------------------------┤
    waveform      float32 [1, N]           --MFCC layer--> [1, F, C] --normalise--------------┼--> RNN head --> probabilities [1, K]
    num_samples   int32   [1]              --valid MFCC frames (1 + n // hop)----------------┘

(video-only runs have no waveform inputs, audio-only runs no frame inputs). The lengths are inputs
because the trained model masks the padding of short clips: an app passes T and N for full
clips, fewer when a clip had fewer frames or less sound, and gets exactly the Keras result.
Frames are already sampled and resized the way `pipeline.preprocess.decode_clip` does it; the
app-side recipe is written to preprocessing.json.

The graph is rebuilt from the run's config (batch 1, dropout off) with the weights of
DIR/model.keras copied by layer name; the training model itself is never converted (its
dynamic batch does not convert for LSTM/GRU, see ../shared/DESIGN.md). Every file keeps the
RNNs as WHILE loops, int8 included (see `calibratable_while_loops` for why the stock converter
crashes on them and how export avoids it). In the int8 file the MFCC, its normalisation and
attention pooling stay float, in the dynamic file the MFCC's mel projection (see `kept_float`:
with them quantized, the speech and action models fell to chance).

    DIR/export/
      saved_model/            serving signature `serving_default`: the inputs above (any batch) -> {'probabilities'}
      model_float.tflite      float32
      model_float16.tflite    float16 weights
      model_dynamic.tflite    int8 weights, float activations (dynamic range)
      model_int8.tflite       int8 weights and activations (uint8 frames stay uint8, float in/out)
      head_float.tflite       feature-level runs: the RNN head alone (frame_features / mfcc in)
      labels.txt  preprocessing.json  parity.json  (convert.log: what the converter printed, when it did)

Every conversion runs in a child process (`_convert_main`): a converter
that crashes (SIGSEGV) costs that one format a one-line error; the others are still written.
The export is built in a temporary folder and renamed into place, so DIR/export is never
half-overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import EXPORT_FORMATS, Config
from pipeline.errors import UserError
from pipeline.files import atomic_write_json, atomic_write_text

TFLITE_FILES = {  # format -> file name in DIR/export
    "float": "model_float.tflite",
    "float16": "model_float16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
    "head_float": "head_float.tflite",
}
SIGNATURE = "serving_default"
OUTPUT = "probabilities"
REPRESENTATIVE_FILE = "representative.npz"
CHILD = "import sys; from pathlib import Path; from pipeline.export import _convert_main; _convert_main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(','))"
CRASH_FOR_TESTS = "ACTREC_EXPORT_CRASH"  # a format name: the converter child kills itself with SIGSEGV there


@dataclass(frozen=True)
class InputSpec:
    """One input of an exported graph, without the batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    doc: str
    default: int | None = None  # lengths: the full length, what a complete clip passes

    def to_json(self, batch: int | None = 1) -> dict:
        out = {"name": self.name, "shape": [batch, *self.shape], "dtype": self.dtype, "doc": self.doc}
        return out if self.default is None else {**out, "default": self.default}


# ----------------------------------------------------------------------------- the inference graphs


class InferenceGraphs:
    """The run's inference graphs, rebuilt from its config with the trained weights.

    deployable(batch_size) -> keras.Model: the raw inputs of `inputs()` -> probabilities [B, K]
    head(batch_size)               -> keras.Model: the cached-feature inputs (frame_features, mfcc, lengths) -> [B, K]
    """

    def __init__(self, run_dir: str | Path):
        from pipeline.models import load_model
        from pipeline.train import model_spec, read_index, run_config

        self.run_dir = Path(run_dir)
        require_trained_model(self.run_dir)
        self.cfg: Config = run_config(self.run_dir)
        self.index = read_index(self.run_dir)
        self.spec = model_spec(self.cfg, self.index)
        self.trained = load_model(self.run_dir / "model.keras")
        self.end_to_end = self.cfg.model.name == "hybrid"  # frames and waveform are already its inputs
        self.head_input_names = [t.name.split(":")[0] for t in self.trained.inputs]

    def inputs(self) -> list[InputSpec]:
        """The deployable graph's inputs, in the order an app fills them."""
        p = self.cfg.preprocess
        specs = []
        if {"frame_features", "frames"} & set(self.head_input_names):
            specs += [
                InputSpec("frames", (p.num_frames, p.image_size, p.image_size, 3), "uint8",
                          "T RGB frames sampled from the clip, resized (short side S) and centre-cropped to S x S; zeros after the last valid frame"),
                InputSpec("frame_lengths", (), "int32", "valid frames in `frames` (T for a clip with at least T frames)", p.num_frames),
            ]
        if {"mfcc", "waveform"} & set(self.head_input_names):
            specs += [
                InputSpec("waveform", (self.num_samples,), "float32",
                          "mono audio at sample_rate in [-1, 1]: the centre num_samples of a longer clip, or the clip followed by zeros"),
                InputSpec("num_samples", (), "int32", "valid (non-padding) samples in `waveform`", self.num_samples),
            ]
        return specs

    def head_inputs(self) -> list[InputSpec]:
        """The head's cached-feature inputs (feature-level runs), as index.json describes them."""
        features = self.index["features"]
        docs = {"frame_features": "frame encoder output per frame", "frame_lengths": "valid frames",
                "mfcc": "MFCCs (librosa recipe, un-normalised)", "mfcc_length": "valid MFCC frames"}
        lengths = {"frame_lengths": "frame_features", "mfcc_length": "mfcc"}
        specs = []
        for name in self.head_input_names:
            shape = tuple(features[name]["shape"])
            if name in ("frame_features", "frame_lengths"):
                shape = shape[1:]  # one view
            if name in lengths:
                full = features[lengths[name]]["shape"][-2]  # T or F
                specs.append(InputSpec(name, shape, "int32", docs[name], full))
            else:
                specs.append(InputSpec(name, shape, "float32", docs[name]))
        return specs

    @property
    def num_samples(self) -> int:
        p = self.cfg.preprocess
        return round(p.audio_seconds * p.sample_rate)

    def rebuilt(self):
        """The trained architecture rebuilt for inference (dropout off), trained weights copied.

        Dropout is an identity at inference, but its seed-generator state would end up in the
        TFLite file as variable ops (VAR_HANDLE, CALL_ONCE).
        """
        from pipeline.models import build_model

        model_cfg = dataclasses.replace(self.cfg.model, dropout=0.0, recurrent_dropout=0.0)
        model = build_model(self.spec, model_cfg)
        copy_weights(self.trained, model)
        return model

    def head(self, batch_size: int | None = 1):
        return with_batch(self.rebuilt(), self.head_inputs(), batch_size, name="head")

    def deployable(self, batch_size: int | None = 1):
        """Raw frames and waveform in, probabilities out; the whole pipeline after decoding."""
        import keras

        from pipeline.features.encoders import FrameDifference, build_encoder
        from pipeline.features.mfcc import MFCC, MFCCParams
        from pipeline.models.hybrid import SamplesToFrames

        model = self.rebuilt()
        if self.end_to_end:
            return with_batch(model, self.inputs(), batch_size, name="deployable")
        p = self.cfg.preprocess
        inputs = {s.name: keras.Input(s.shape, batch_size=batch_size, dtype=s.dtype, name=s.name) for s in self.inputs()}
        features = {}
        if "frames" in inputs:
            weights = self.run_dir / "features" / "encoder.weights.h5"
            if not weights.is_file():
                raise UserError(f"{weights}: the run's frame encoder weights are missing (preprocessing writes them); re-run `actrec preprocess`")
            encoder = build_encoder(p.encoder, p.image_size, str(weights), seed=self.cfg.seed)
            pixels = FrameDifference(name="frame_difference")(inputs["frames"]) if p.frame_difference else inputs["frames"]
            features["frame_features"] = _encode_frames(encoder, pixels)
            features["frame_lengths"] = inputs["frame_lengths"]
        if "waveform" in inputs:
            params = MFCCParams.from_config(p)
            features["mfcc"] = MFCC.from_params(params, name="mfcc")(inputs["waveform"])
            features["mfcc_length"] = SamplesToFrames(params.hop_length, params.num_frames(self.num_samples), name="mfcc_length")(inputs["num_samples"])
        return keras.Model(inputs, call_by_name(model, features), name="deployable")


def _encode_frames(encoder, frames):
    """encoder ([N, S, S, 3] -> [N, D]) on every frame of frames [B, T, S, S, 3] -> [B, T, D], as one batch of B*T images.

    keras.layers.TimeDistributed unrolls a known T into T copies of the encoder: T times the conv ops,
    and in the int8 file T times their bias tensors and quantization parameters, each copy calibrated
    on its own frame position (measured on the 16-frame action model: 64 CONV_2D ops instead of 4,
    float file 16 KB and int8 file 26 KB smaller).
    """
    import keras

    num_frames, image_shape = frames.shape[1], tuple(frames.shape[2:])
    features = encoder(keras.ops.reshape(frames, (-1, *image_shape)))
    return keras.ops.reshape(features, (-1, num_frames, features.shape[-1]))


def require_trained_model(run_dir: Path) -> None:
    if not (run_dir / "model.keras").is_file():
        raise UserError(f"{run_dir}: no trained model (model.keras); run `actrec train --run-dir {run_dir}` first")


def copy_weights(source, target) -> None:
    """Copy weights layer by layer, matched by name (the rebuilt graph names its layers as training did)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def with_batch(model, specs: Sequence[InputSpec], batch_size: int | None, name: str):
    """`model` called on inputs with a fixed batch size (1 for TFLite: LSTM/GRU loops need a static batch)."""
    import keras

    inputs = {s.name: keras.Input(s.shape, batch_size=batch_size, dtype=s.dtype, name=s.name) for s in specs}
    return keras.Model(inputs, call_by_name(model, inputs), name=name)


def call_by_name(model, tensors: dict):
    """model(...) with its inputs picked from `tensors` by name, in the model's own input order.

    (Keras matches a dict to a functional model's inputs only in some cases; a list always works.)
    """
    return model([tensors[t.name.split(":")[0]] for t in model.inputs])


# ----------------------------------------------------------------------------- conversion (child process)


def save_model(model, path: Path, specs: Sequence[InputSpec], batch_size: int | None) -> None:
    """SavedModel with one named signature: {input name: tensor} -> {'probabilities': [B, K]}."""
    import keras
    import tensorflow as tf

    signature = {s.name: tf.TensorSpec((batch_size, *s.shape), s.dtype, name=s.name) for s in specs}
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, lambda inputs: {OUTPUT: model(inputs, training=False)}, input_signature=[signature])
    archive.write_out(str(path), verbose=False)


def convert(saved_model: Path, mode: str, representative: Path | None = None) -> bytes:
    """TFLite flatbuffer (builtin ops only) of a batch-1 SavedModel: mode float | float16 | dynamic | int8."""
    import tensorflow as tf

    from pipeline.features.encoders import quiet_converter

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode != "int8":
        with quiet_converter():
            content = converter.convert()
        # Dynamic range: an FC with int8 weights quantizes its input on the fly, and the MFCC's mel
        # projection takes a power spectrum (measured: -3 points on a speech model); keep it float.
        if mode == "dynamic":
            content = dequantize_kept_float(content)
        if mode == "float16":
            content = widen_small_float16_constants(drop_metadata(content, FP16_INFERENCE_HINT))
        else:
            content = fill_splat_constants(content)
        return strip_tensor_names(content)

    samples = dict(np.load(representative))
    count = len(next(iter(samples.values())))

    def representative_dataset():
        for i in range(count):
            yield {name: value[i : i + 1] for name, value in samples.items()}

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # Calibrate, then quantize all but `kept_float`: a power spectrum spans over 100 dB and 8 bits
    # hold 48, int8 utterance normalisation gave NaNs, masked attention scores are -1e9 (measured:
    # speech and action models fell to chance with them quantized). The quantizer's node denylist is
    # only reachable through mlir_quantize, the function TFLiteConverter itself calls after calibrating.
    # FULLY_CONNECTED weights get one scale per tensor (convolutions keep one per output channel,
    # which depthwise MobileNets need): an RNN has 3 x units channels per kernel, and each channel
    # cost its weights and bias a scale and a zero point (measured: 14 KB of the int8 action model's
    # 412, 1 point of the file's size relative to float; agreement with float stayed 100% on the
    # action and speech test clips, accuracy unchanged).
    from tensorflow.lite.python import convert as tflite_convert

    converter._experimental_calibrate_only = True
    with quiet_converter(), calibratable_while_loops():
        calibrated = converter.convert()
        content = tflite_convert.mlir_quantize(calibrated, denylisted_nodes=kept_float(calibrated),
                                               input_data_type=tf.float32, output_data_type=tf.float32,
                                               disable_per_channel_for_dense_layers=True)
    content = fill_splat_constants(tflite_convert.deduplicate_readonly_buffers(content))
    return strip_tensor_names(float16_float_constants(int8_float_constants(content)))


@contextlib.contextmanager
def calibratable_while_loops():
    """Within: the int8 calibrator gets models whose WHILE-loop bodies pass no input through unchanged.

    The converter turns the weights and inputs an RNN loop reads into loop variables that its body
    returns untouched. The WHILE kernel frees such pass-through outputs and the calibrator then
    reads the freed memory: SIGSEGV on any LSTM/GRU (tensorflow/tensorflow#75140, #87468). Until
    that is fixed upstream, the float model handed to the calibrator returns a RESHAPE copy of each
    pass-through instead; the copies are identities and stay in the file (a few ops per loop).
    """
    from tensorflow.lite.python import lite

    stock = lite._calibrator.Calibrator

    class Calibrator(stock):
        def __init__(self, model_content, *args, **kwargs):
            super().__init__(copy_while_passthrough_outputs(model_content), *args, **kwargs)

    lite._calibrator.Calibrator = Calibrator
    try:
        yield
    finally:
        lite._calibrator.Calibrator = stock


def copy_while_passthrough_outputs(content: bytes) -> bytes:
    """Each WHILE body output that is the body's own input tensor becomes a RESHAPE (to the same shape) of it."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    reshape = _opcode_index(model, schema.BuiltinOperator.RESHAPE)
    bodies = {op.builtinOptions.bodySubgraphIndex for subgraph in model.subgraphs for op in subgraph.operators
              if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "WHILE"}
    for body in (model.subgraphs[i] for i in sorted(bodies)):
        outputs = body.outputs.tolist()
        for position, (source, output) in enumerate(zip(body.inputs.tolist(), outputs)):
            tensor = body.tensors[source]
            if source != output or tensor.type not in (schema.TensorType.FLOAT32, schema.TensorType.INT32):
                continue
            shape = _add_constant(model, body, np.asarray(tensor.shape, np.int32), schema.TensorType.INT32)
            copy = schema.TensorT()
            copy.shape, copy.shapeSignature, copy.type, copy.buffer = tensor.shape, tensor.shapeSignature, tensor.type, 0
            body.tensors.append(copy)
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = reshape, np.array([source, shape], np.int32), np.array([len(body.tensors) - 1], np.int32)
            body.operators.append(op)
            outputs[position] = len(body.tensors) - 1
        body.outputs = np.array(outputs, np.int32)
    return _serialize(model)


def _serialize(model) -> bytes:
    """The flatbuffer of a ModelT (flatbuffer_utils' object API), each distinct vector written once.

    flatbuffer_utils writes every vector anew: the per-channel zero points (int64, all 0) of each
    int8 weight and bias, and the shape of each tensor. A flatbuffer may point many tables at one
    vector (the format is read-only, the TFLite verifier accepts it); shared, the int8 action model
    is 14 KB smaller (398 -> 383 KB; its float file 1337 -> 1328 KB). Buffer data (uint8) is left
    to `deduplicate_readonly_buffers`, which knows which constants may share.
    """
    import flatbuffers
    from tensorflow.lite.tools import flatbuffer_utils

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size: int):
            super().__init__(size)
            self.written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):  # noqa: N802  (flatbuffers' name)
            if x.dtype == np.uint8:
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self.written:
                self.written[key] = super().CreateNumpyVector(x)
            return self.written[key]

    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=flatbuffer_utils._TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _opcode_index(model, builtin: int) -> int:
    """Index of `builtin` in the model's operator codes, added when missing."""
    from tensorflow.lite.python import schema_py_generated as schema

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_buffer(model, values: np.ndarray) -> int:
    """Index of a new buffer holding `values`' bytes."""
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(values.tobytes(), np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _add_constant(model, subgraph, values: np.ndarray, tensor_type: int) -> int:
    """Index of a new constant tensor of `subgraph` holding `values` (shape and all)."""
    from tensorflow.lite.python import schema_py_generated as schema

    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer = np.array(values.shape, np.int32), tensor_type, _add_buffer(model, values)
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _computed_constants(content: bytes, source) -> bytes:
    """The flatbuffer with each constant tensor for which source(model, subgraph, index, data) gives
    (operator code index, input tensor indices) computed by that op instead, at the start of its subgraph.

    `source` adds the op's inputs (constants: first is in order) or returns None to keep the tensor.
    A buffer can be shared by several tensors (across subgraphs too): it is emptied once none reads it.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    replaced = set()
    for subgraph in model.subgraphs:
        new_ops = []
        for index, tensor in enumerate(list(subgraph.tensors)):  # a copy: `source` appends tensors
            data = model.buffers[tensor.buffer].data
            computed = None if data is None or len(data) == 0 or tensor.isVariable else source(model, subgraph, index, bytes(data))
            if computed is None:
                continue
            replaced.add(tensor.buffer)
            tensor.buffer = 0
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = computed[0], np.array(computed[1], np.int32), np.array([index], np.int32)
            new_ops.append(op)
        subgraph.operators = new_ops + list(subgraph.operators)
    still_read = {tensor.buffer for subgraph in model.subgraphs for tensor in subgraph.tensors}
    for buffer in replaced - still_read:
        model.buffers[buffer].data = None
    return _serialize(model)


SPLAT_MIN_ELEMENTS = 1024  # constants this big that repeat one value are filled in at run time


def fill_splat_constants(content: bytes, min_elements: int = SPLAT_MIN_ELEMENTS) -> bytes:
    """Replace each float32 or int32 constant of at least min_elements copies of one value that only
    WHILE ops read by a FILL op.

    The converter gives each RNN loop its zero-initialised outputs (one row per step) as a constant
    of zeros: 29 KB of the float action model (101 and 16 steps x 64 units), and in the int8 file
    int8 zeros with a scale per step (8 KB). Only loop inputs: XNNPACK runs a convolution or dense
    layer only when its weights and bias are constants (a zero bias filled in would leave it to the
    slower reference kernels).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32}

    def fill(model, subgraph, index, data):
        tensor = subgraph.tensors[index]
        readers = {flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in subgraph.operators if index in op.inputs}
        if tensor.type not in dtypes or len(data) < 4 * min_elements or readers != {"WHILE"}:
            return None
        values = np.frombuffer(data, dtypes[tensor.type])
        if not (values == values[0]).all():
            return None
        dims = _add_constant(model, subgraph, np.asarray(tensor.shape, np.int32), schema.TensorType.INT32)
        return _opcode_index(model, schema.BuiltinOperator.FILL), [dims, _add_constant(model, subgraph, values[0], tensor.type)]

    return _computed_constants(content, fill)


def _narrowed_float_constants(content: bytes, min_elements: int, narrow) -> bytes:
    """Each float32 constant of at least min_elements values stored as narrow(values) -> (tensor type,
    stored values, quantization or None), widened back to float32 by a DEQUANTIZE op at run time
    (narrow returns None for values it cannot store)."""
    from tensorflow.lite.python import schema_py_generated as schema

    stored: dict[int, tuple | None] = {}  # float32 buffer -> (tensor type, its narrow buffer, quantization), once per buffer

    def dequantized(model, subgraph, index, data):
        tensor = subgraph.tensors[index]
        if tensor.type != schema.TensorType.FLOAT32 or len(data) < 4 * min_elements or len(tensor.shape) < 1:
            return None
        if tensor.buffer not in stored:
            narrowed = narrow(np.frombuffer(data, np.float32).reshape(tensor.shape))
            stored[tensor.buffer] = None if narrowed is None else (narrowed[0], _add_buffer(model, narrowed[1]), narrowed[2])
        if stored[tensor.buffer] is None:
            return None
        source = schema.TensorT()
        source.shape, (source.type, source.buffer, source.quantization) = tensor.shape, stored[tensor.buffer]
        subgraph.tensors.append(source)
        return _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE), [len(subgraph.tensors) - 1]

    return _computed_constants(content, dequantized)


INT8_WEIGHT_MIN_ELEMENTS = 1024  # float32 constants of the int8 file this big are stored as int8


def int8_float_constants(content: bytes, min_elements: int = INT8_WEIGHT_MIN_ELEMENTS) -> bytes:
    """Store each float32 constant of at least min_elements values as int8 (symmetric, per row of axis 0)
    widened back to float32 by a DEQUANTIZE op at run time.

    The ops `kept_float` keeps float (the mel projection, attention pooling) still compute in float,
    but their weights shrink 4x like the rest of the int8 file (max error: half a step of 1/127
    of each row's largest value).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    def int8_rows(values):
        scale = np.maximum(np.abs(values).reshape(len(values), -1).max(axis=1), 1e-30) / 127.0  # [rows]
        quantization = schema.QuantizationParametersT()
        quantization.scale, quantization.zeroPoint = scale.astype(np.float32), np.zeros(len(scale), np.int64)
        quantization.quantizedDimension = 0
        return schema.TensorType.INT8, np.round(values / scale.reshape((-1,) + (1,) * (values.ndim - 1))).astype(np.int8), quantization

    return _narrowed_float_constants(content, min_elements, int8_rows)


FLOAT16_CONSTANT_MIN_ELEMENTS = 256  # smaller float32 constants of the int8 file (below int8's threshold) this big are stored as float16


def float16_float_constants(content: bytes, min_elements: int = FLOAT16_CONSTANT_MIN_ELEMENTS) -> bytes:
    """Store each float32 constant of at least min_elements values as float16, widened back by DEQUANTIZE.

    Run after `int8_float_constants`, it takes the MFCC's window, difference and gain constants
    (257 and 512 values) and DCT: int8 steps (1/254 of the largest value) would be noise above the
    MFCC's 80 dB floor, float16 rounding (2^-11 relative) is below it, and far below the int8
    steps of the quantized layers the MFCCs feed (measured on the action model: 7 KB of 390,
    test agreement with float still 100%). Constants beyond float16's range (the inverse gains of
    the lowest bins reach 4e7) stay float32.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    def float16(values):
        return None if np.abs(values).max() > np.finfo(np.float16).max else (schema.TensorType.FLOAT16, values.astype(np.float16), None)

    return _narrowed_float_constants(content, min_elements, float16)


def kept_float(content: bytes) -> list[str]:
    """Tensors the int8 graph computes in float: the MFCC, its normalisation and attention pooling.

    Found by the Keras layer scopes in the TFLite names (`mfcc/`, `mfcc_norm/`, `audio_attention/`, ...).
    Attention pooling gives padded steps a score of -1e9: an int8 scale that spans it rounds every
    real score to the same value (measured: the action model fell to chance, 13%, with it quantized).
    """
    import re

    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    in_mfcc = re.compile(r"(^|/)(mfcc|mfcc_norm|\w+_attention)(_\d+)?/")
    names = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = (tensor.name or b"").decode()
            if any(in_mfcc.search(part) for part in name.split(";")):
                names.append(name)
    return names


def dequantize_kept_float(content: bytes) -> bytes:
    """Give the int8 weights of `kept_float` ops (the MFCC's mel projection) back as float32, dequantized per channel.

    A dynamic-range op with int8 weights quantizes its input on the fly; with float weights it runs in float.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    keep = set(kept_float(content))
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if not any((subgraph.tensors[i].name or b"").decode() in keep for i in op.outputs):
                continue
            for i in op.inputs:
                tensor = subgraph.tensors[i] if i >= 0 else None
                data = model.buffers[tensor.buffer].data if tensor is not None else None
                if tensor is None or tensor.type != schema.TensorType.INT8 or data is None or len(data) == 0:
                    continue
                q = tensor.quantization
                shape = [1] * len(tensor.shape)
                shape[q.quantizedDimension] = -1
                scale, zero = np.reshape(q.scale, shape), np.reshape(q.zeroPoint, shape)
                values = ((np.frombuffer(bytes(data), np.int8).reshape(tensor.shape) - zero) * scale).astype(np.float32)
                # a new buffer: the int8 one may be shared
                tensor.buffer, tensor.type, tensor.quantization = _add_buffer(model, values), schema.TensorType.FLOAT32, None
    return _serialize(model)


# Two fixes to the float16 converter's output, both for XNNPACK (the default CPU runtime):
# - it stores every constant as float16, scalars included; under XNNPACK (not the reference kernels) the
#   action model then gave NaN probabilities (measured on the demo run; 2e-4 once the small constants
#   are float32 again). Only the big weight tensors make the file smaller, so the rest stays float32.
# - it marks the file "reduced_precision_support: fp16accfp32", which invites XNNPACK to compute in
#   float16 on CPUs with float16 arithmetic (ARMv8.2+ phones): the MFCC's power spectrum (up to ~3e5)
#   overflows float16's 65504. Without the mark, float16 weights are widened to float32 at load time.
FP16_INFERENCE_HINT = "reduced_precision_support"
FLOAT16_MIN_ELEMENTS = 1024  # constants smaller than this stay float32 in model_float16.tflite


def drop_metadata(content: bytes, name: str) -> bytes:
    """The flatbuffer without its metadata entry `name`."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name]
    return _serialize(model)


def widen_small_float16_constants(content: bytes, min_elements: int = FLOAT16_MIN_ELEMENTS) -> bytes:
    """Replace each float16 constant of fewer than min_elements values, and the DEQUANTIZE op that widened
    it at run time, by a float32 constant (the op's output tensor, now holding the values)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    for subgraph in model.subgraphs:
        kept_ops = []
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE:
                source, widened = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]]
                data = model.buffers[source.buffer].data
                if source.type == schema.TensorType.FLOAT16 and data is not None and 0 < len(data) < 2 * min_elements:
                    widened.buffer = _add_buffer(model, np.frombuffer(bytes(data), np.float16).astype(np.float32))
                    continue
            kept_ops.append(op)
        subgraph.operators = kept_ops
    return _serialize(model)


def strip_tensor_names(content: bytes) -> bytes:
    """Drop the names of intermediate tensors (inputs, outputs and the signature keep theirs).

    The converter names every tensor after the ops it came from, often with long fused scopes;
    in an RNN unrolled over 200 steps those names were ~75% of the file (3 MB of 4 MB).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    model.description = None
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs.tolist()) | set(subgraph.outputs.tolist())
        for i, tensor in enumerate(subgraph.tensors):
            if i not in keep:
                tensor.name = None
    return _serialize(model)


def _convert_main(run_dir: Path, work: Path, targets: list[str]) -> None:
    """Child process: write each target into `work`, logging start/ok/error lines to work/status.jsonl."""
    graphs = InferenceGraphs(run_dir)
    saved_models: dict[str, Path] = {}

    def saved_model_for(kind: str) -> Path:
        """A batch-1 SavedModel of the deployable graph or the head, written once per kind."""
        if kind not in saved_models:
            path = work / f".saved_model_{kind}"
            model = graphs.deployable(1) if kind == "deployable" else graphs.head(1)
            save_model(model, path, graphs.inputs() if kind == "deployable" else graphs.head_inputs(), 1)
            saved_models[kind] = path
        return saved_models[kind]

    for target in targets:
        _status(work, "start", target)
        if os.environ.get(CRASH_FOR_TESTS) == target:
            os.kill(os.getpid(), signal.SIGSEGV)
        start = time.time()
        try:
            if target == "saved_model":
                save_model(graphs.deployable(None), work / "saved_model", graphs.inputs(), None)
            elif target == "head_float":
                (work / TFLITE_FILES[target]).write_bytes(convert(saved_model_for("head"), "float"))
            else:
                content = convert(saved_model_for("deployable"), target, work / REPRESENTATIVE_FILE)
                (work / TFLITE_FILES[target]).write_bytes(content)
        except Exception as e:  # noqa: BLE001  (the converter raises many types; the format fails, the export goes on)
            _status(work, "error", target, error=_one_line(e))
            continue
        _status(work, "ok", target, seconds=round(time.time() - start, 1))
    for path in saved_models.values():
        shutil.rmtree(path, ignore_errors=True)


def _status(work: Path, state: str, target: str, **extra) -> None:
    with open(work / "status.jsonl", "a") as f:
        f.write(json.dumps({"state": state, "target": target, **extra}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return f"{type(e).__name__}: {(errors or lines or [''])[0][:300]}"


def run_conversions(run_dir: Path, work: Path, targets: list[str], progress: bool = True) -> dict[str, dict]:
    """Convert every target in child processes; a crashed child costs only the target it was on.

    Returns {target: {'seconds': s} | {'error': one line}}.
    """
    results: dict[str, dict] = {}
    remaining = list(targets)
    log = work / "convert.log"
    while remaining:
        status_file = work / "status.jsonl"
        status_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-c", CHILD, str(run_dir), str(work), ",".join(remaining)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        with open(log, "a") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1], check=False)
        started = None
        for line in status_file.read_text().splitlines() if status_file.is_file() else []:
            event = json.loads(line)
            if event["state"] == "start":
                started = event["target"]
            else:
                results[event["target"]] = {k: v for k, v in event.items() if k not in ("state", "target")}
                started = None
                if progress:
                    _print_conversion(event)
        done = [t for t in remaining if t in results]
        if proc.returncode != 0 and started is not None:
            how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            results[started] = {"error": f"the TFLite converter crashed ({how}); see {log.name}"}
            if progress:
                _print_conversion({"state": "error", "target": started, **results[started]})
        elif proc.returncode != 0:  # failed before its first target: nothing else will work either
            tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] if log.is_file() else []
            for t in remaining:
                if t not in results:
                    results[t] = {"error": f"conversion process failed (exit status {proc.returncode}): {tail[0][:300] if tail else ''}"}
        remaining = [t for t in remaining if t not in results and t not in done]
    return results


def _print_conversion(event: dict) -> None:
    if event["state"] == "ok":
        print(f"export: {event['target']} written in {event['seconds']:.1f} s", flush=True)
    else:
        print(f"export: {event['target']} failed: {event['error']}", flush=True)


def tflite_ops(path: str | Path) -> dict[str, int]:
    """Op name -> count over every subgraph of a .tflite file (WHILE bodies included), read from the flatbuffer.

    Custom ops appear under their custom code; Flex (SELECT_TF_OPS) ops are named `Flex...`.
    An interpreter's op list would also show XNNPACK `DELEGATE` nodes, which are not Flex ops.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(Path(path).read_bytes()))
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.CUSTOM:
                name = bytes(code.customCode).decode()
            else:
                name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tflite_weight_bytes(path: str | Path) -> int:
    """Bytes of constant data (weights) in a .tflite file; the rest is the graph itself (ops, tensors, quantization)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(Path(path).read_bytes()))
    return int(sum(len(b.data) for b in model.buffers if b.data is not None))


# ----------------------------------------------------------------------------- running an exported file


def raw_input_config(cfg: Config) -> Config:
    """The run's config with decode_clip also returning the raw waveform (what the deployable graph takes).

    decode_clip keeps the waveform only for runs without a frame encoder; the exported graph
    computes MFCCs itself for every audio run.
    """
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, encoder="none"))


def clip_inputs(decoded: dict, view: int = 0) -> dict[str, np.ndarray]:
    """One view of a decode_clip result as the deployable graph's inputs (no batch axis).

    frames uint8 [T, S, S, 3], frame_lengths int32 [], waveform float32 [N], num_samples int32 [].
    """
    inputs = {}
    if "frames" in decoded:
        inputs["frames"] = decoded["frames"][view]
        inputs["frame_lengths"] = np.int32(decoded["frame_lengths"][view])
    if "waveform" in decoded:
        inputs["waveform"] = decoded["waveform"]
        inputs["num_samples"] = np.int32(decoded["num_samples"])
    return inputs


class TFLiteClassifier:
    """An exported .tflite file run the way an app runs it, one clip at a time.

    TFLiteClassifier(path, threads=2) reads preprocessing.json and labels.txt beside the file.
    predict({'frames': uint8 [T, S, S, 3], 'frame_lengths': int, 'waveform': float32 [N], 'num_samples': int})
        -> probabilities float32 [K]
    Inputs the file does not take are ignored; a missing length means a full-length clip.
    head_*.tflite files take the cached features instead (frame_features [T, D], mfcc [F, C], lengths).
    """

    def __init__(self, path: str | Path, threads: int = 2):
        import tensorflow as tf

        self.path = Path(path)
        if self.path.suffix != ".tflite":
            raise UserError(f"{self.path}: not a .tflite file (expected a file written by `actrec export`, or keras)")
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such file; `actrec export --run-dir RUN` writes RUN/export/*.tflite")
        meta_file = self.path.parent / "preprocessing.json"
        if not meta_file.is_file():
            raise UserError(f"{meta_file}: missing; the .tflite file must sit beside the preprocessing.json `actrec export` wrote")
        self.preprocessing = json.loads(meta_file.read_text())
        self.labels = (self.path.parent / self.preprocessing["labels_file"]).read_text().splitlines()
        graph = self.preprocessing["head"] if self.path.name.startswith("head") else self.preprocessing
        self.inputs = {spec["name"]: spec for spec in graph["inputs"]}
        try:
            self.interpreter = tf.lite.Interpreter(model_path=str(self.path), num_threads=threads)
            # allocate_tensors() applies the default XNNPACK delegate, as an app's runtime does; a signature
            # runner made before it runs the reference kernels, which hid an XNNPACK-only float16 failure
            self.interpreter.allocate_tensors()
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as e:  # a truncated or foreign file: the interpreter's message is long
            raise UserError(f"{self.path}: not a TFLite model `actrec export` wrote ({str(e).splitlines()[0][:120]})") from None

    def predict(self, inputs: dict) -> np.ndarray:
        feed = {}
        for name, spec in self.inputs.items():
            if name in inputs:
                value = np.asarray(inputs[name], dtype=spec["dtype"])
            elif "default" in spec:
                value = np.asarray(spec["default"], dtype=spec["dtype"])
            else:
                raise UserError(f"{self.path.name}: input '{name}' missing (expected {spec['dtype']} {spec['shape'][1:]})")
            if list(value.shape) != spec["shape"][1:]:
                raise UserError(f"{self.path.name}: input '{name}' must have shape {spec['shape'][1:]}, got {list(value.shape)}")
            feed[name] = value[None]
        return self.runner(**feed)[OUTPUT][0]


# ----------------------------------------------------------------------------- what an app needs besides the model


def preprocessing_spec(graphs: InferenceGraphs, classes: list[str]) -> dict:
    """preprocessing.json: the inputs and outputs, and what an app does before calling the model."""
    p = graphs.cfg.preprocess
    spec = {
        "model": graphs.cfg.model.name,
        "labels_file": "labels.txt",
        "num_classes": len(classes),
        "signature": SIGNATURE,
        "inputs": [s.to_json() for s in graphs.inputs()],
        "outputs": [{"name": OUTPUT, "shape": [1, len(classes)], "dtype": "float32", "doc": "class probabilities, in labels.txt order"}],
    }
    names = {s.name for s in graphs.inputs()}
    if "frames" in names:
        spec["video"] = {
            "num_frames": p.num_frames,
            "frame_size": p.image_size,
            "sampling": "uniform" if p.sampling == "segments" else p.sampling,
            "num_clips": p.num_clips if p.sampling == "multi_clip" else 1,
            "how": (f"decode the clip, keep T={p.num_frames} frames spread evenly over it (the centres of T equal segments; "
                    f"multi_clip: K half-overlapping windows, one model call each, probabilities averaged), "
                    f"convert to RGB, resize so the shorter side is {p.image_size} (area filter when shrinking, bilinear "
                    f"when enlarging) and centre-crop {p.image_size}x{p.image_size}; a clip with fewer than T frames gives "
                    f"all of them followed by zero frames, with frame_lengths = the number of real frames"),
            "pixel_values": "uint8 0..255; the model normalises them itself",
        }
    if "waveform" in names:
        spec["audio"] = {
            "sample_rate": p.sample_rate,
            "clip_seconds": p.audio_seconds,
            "num_samples": graphs.num_samples,
            "how": (f"mono (channels averaged), resampled to {p.sample_rate} Hz, values in [-1, 1]; a longer recording is "
                    f"centre-cropped to {graphs.num_samples} samples, a shorter one zero-padded at the end with "
                    f"num_samples = the number of real samples; the model computes its MFCCs itself"),
        }
    if not graphs.end_to_end:
        spec["head"] = {
            "file": TFLITE_FILES["head_float"],
            "inputs": [s.to_json() for s in graphs.head_inputs()],
            "doc": "the RNN head alone, for apps that run their own frame encoder and MFCC (pipeline.preprocess recipe)",
        }
    return spec


def write_representative_data(cfg: Config, path: Path, count: int) -> int:
    """Decode up to `count` raw training clips (the int8 calibration set) into an .npz of batch-free inputs.

    Raises UserError naming what is missing when no clip can be decoded.
    """
    from pipeline.media import MediaError
    from pipeline.preprocess import ClipJob, decode_clip, resolve_rows

    root = Path(cfg.data.root)
    if not root.is_dir():
        raise UserError(f"int8 needs training clips to calibrate on: data.root {root} not found")
    try:
        rows, _, _ = resolve_rows(cfg)
    except UserError as e:
        raise UserError(f"int8 needs training clips to calibrate on: {e}") from None
    rows = [r for r in rows if r.split == "train"]
    raw_cfg = raw_input_config(cfg)
    samples: dict[str, list] = {}
    tried = 0
    for row in rows:
        if len(next(iter(samples.values()), [])) >= count:
            break
        tried += 1
        try:
            decoded = decode_clip(ClipJob(str(root), row, 0), raw_cfg)
        except MediaError:
            continue
        for name, value in clip_inputs(decoded).items():
            samples.setdefault(name, []).append(value)
    if not samples:
        raise UserError(f"int8 needs training clips to calibrate on: none of {tried} training clips under {root} could be decoded")
    np.savez(path, **{name: np.stack(values) for name, values in samples.items()})
    return len(next(iter(samples.values())))


# ----------------------------------------------------------------------------- parity


def _latency_ms(fn, runs: int) -> dict:
    fn(), fn()  # warm-up: the first calls allocate and plan
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median": round(float(np.median(times)), 3), "p90": round(float(np.percentile(times, 90)), 3)}


def measure_parity(graphs: InferenceGraphs, export_dir: Path, tflite_targets: list[str], progress: bool = True) -> dict:
    """Compare every exported file with the Keras model on the raw test clips; time them."""
    import tensorflow as tf
    from tqdm import tqdm

    from pipeline.evaluate import RunModel
    from pipeline.media import MediaError
    from pipeline.preprocess import ClipJob, decode_clip, resolve_rows

    cfg = graphs.cfg
    runs = cfg.export.latency_runs
    keras_model = RunModel(graphs.run_dir)  # what `actrec evaluate` measures: decode_clip -> encoder -> model.keras
    classes = keras_model.classes
    root = Path(cfg.data.root)
    try:
        rows = [r for r in resolve_rows(cfg)[0] if r.split == "test"] if root.is_dir() else []
    except UserError:
        rows = []
    if not rows:
        return {"error": f"no raw test clips under data.root {root}: parity and latency not measured"}

    deployable = graphs.deployable(None)
    saved_model = tf.saved_model.load(str(export_dir / "saved_model")).signatures[SIGNATURE] if (export_dir / "saved_model").is_dir() else None
    classifiers = {t: TFLiteClassifier(export_dir / TFLITE_FILES[t]) for t in tflite_targets}
    decode_cfg = raw_input_config(keras_model.clip_cfg)  # the evaluation sampling, plus the raw waveform

    labels, skipped, first_inputs, first_head_inputs = [], [], None, None
    probs: dict[str, list] = {"keras": [], "deployable": [], **{t: [] for t in classifiers}}
    saved_model_diff = 0.0
    for row in tqdm(rows, desc="parity", unit="clip", disable=not progress, dynamic_ncols=True):
        try:
            decoded = decode_clip(ClipJob(str(root), row, 0), decode_cfg)
        except MediaError as e:
            skipped.append([row.path, str(e)])
            continue
        labels.append(classes.index(row.label))
        views = range(len(decoded.get("frame_lengths", [0])))
        keras_probs = keras_model.predict_decoded(decoded)  # [V, K]
        probs["keras"].append(keras_probs)
        view_inputs = [clip_inputs(decoded, v) for v in views]
        first_inputs = first_inputs or view_inputs[0]
        batch = {name: np.stack([vi[name] for vi in view_inputs]) for name in view_inputs[0]}
        batch = {s.name: batch[s.name] for s in graphs.inputs()}
        deployable_probs = np.asarray(deployable(batch, training=False))
        probs["deployable"].append(deployable_probs)
        if saved_model is not None:
            served = saved_model(**{k: tf.constant(v) for k, v in batch.items()})[OUTPUT].numpy()
            saved_model_diff = max(saved_model_diff, float(np.abs(served - deployable_probs).max()))
        for target, classifier in classifiers.items():
            if target == "head_float":  # the cached-feature path: the run's encoder and librosa MFCCs
                head_batch = keras_model.model_inputs(keras_model.processor.encode([decoded])[0])
                head_views = [{k: v[i] for k, v in head_batch.items()} for i in views]
                first_head_inputs = first_head_inputs or head_views[0]
                probs[target].append(np.stack([classifier.predict(hv) for hv in head_views]))
            else:
                probs[target].append(np.stack([classifier.predict(vi) for vi in view_inputs]))
    if not labels:
        return {"error": f"none of the {len(rows)} test clips under {root} could be decoded", "skipped": skipped}

    labels = np.array(labels)
    reference = np.stack(probs["keras"])  # [N, V, K]
    keras_top1 = reference.mean(1).argmax(-1)

    def compare(view_probs: list) -> dict:
        view_probs = np.stack(view_probs)
        top1 = view_probs.mean(1).argmax(-1)
        return {"top1_agreement": round(float((top1 == keras_top1).mean()), 4),
                "max_abs_diff_prob": float(np.abs(view_probs - reference).max()),
                "accuracy": round(float((top1 == labels).mean()), 4)}

    batch_one = {k: np.asarray(v)[None] for k, v in first_inputs.items() if k in {s.name for s in graphs.inputs()}}
    result = {
        "test_clips": len(labels),
        "skipped": skipped,
        "reference": "model.keras on the raw test clips through the run's own preprocessing (what `actrec evaluate` measures)",
        "keras": {"accuracy": round(float((keras_top1 == labels).mean()), 4),
                  "predict_ms": _latency_ms(lambda: deployable.predict(batch_one, verbose=0), runs)},
        "deployable_keras": {**compare(probs["deployable"]),
                             "doc": "the rebuilt graph with in-model encoder and MFCC, in Keras, vs the reference"},
        "formats": {},
    }
    if saved_model is not None:
        result["saved_model"] = {"max_abs_diff_prob_vs_deployable_keras": saved_model_diff}
    for target, classifier in classifiers.items():
        path = export_dir / TFLITE_FILES[target]
        sample = first_head_inputs if target == "head_float" else first_inputs
        latency = {}
        for threads in (1, 2):
            timed = TFLiteClassifier(path, threads=threads)
            latency[f"threads_{threads}"] = _latency_ms(lambda timed=timed, sample=sample: timed.predict(sample), runs)
        result["formats"][target] = {"file": path.name, "bytes": path.stat().st_size, **compare(probs[target]), "latency_ms": latency}
    return result


# ----------------------------------------------------------------------------- the stage


def check_formats(formats: Sequence[str] | str) -> list[str]:
    """A list or comma-separated string of format names -> the list, in EXPORT_FORMATS order."""
    names = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f).strip() for f in formats]
    unknown = [f for f in names if f not in EXPORT_FORMATS]
    if unknown or not names:
        problem = f"unknown format {unknown[0]!r}" if unknown else "none given"
        raise UserError(f"export formats: {problem}; known: {', '.join(EXPORT_FORMATS)}")
    return [f for f in EXPORT_FORMATS if f in names]


def export(run_dir: str | Path, formats: Sequence[str] | str | None = None, progress: bool = True) -> dict:
    """Export a trained run to DIR/export/ (see the module docstring); returns the parity.json dict.

    formats: names from saved_model, float, float16, dynamic, int8 (default: the run's export.formats).
    A format that fails (converter error or crash, no calibration clips for int8) is reported in
    parity.json['errors'] with one line; the others are still written.
    """
    run_dir = Path(run_dir)
    require_trained_model(run_dir)
    graphs = InferenceGraphs(run_dir)
    cfg = graphs.cfg
    formats = check_formats(formats if formats is not None else cfg.export.formats)
    classes = graphs.index["classes"]

    out_dir = run_dir / "export"
    work = run_dir / f".export.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        atomic_write_text(work / "labels.txt", "".join(f"{c}\n" for c in classes))
        atomic_write_json(work / "preprocessing.json", preprocessing_spec(graphs, classes))
        errors: dict[str, str] = {}
        targets = list(formats)
        if "float" in targets and not graphs.end_to_end:
            targets.insert(targets.index("float") + 1, "head_float")
        if "int8" in targets:
            try:
                count = write_representative_data(cfg, work / REPRESENTATIVE_FILE, cfg.export.representative_samples)
                if progress:
                    print(f"export: int8 calibration on {count} training clips", flush=True)
            except UserError as e:
                errors["int8"] = str(e)
                targets.remove("int8")
                if progress:
                    print(f"export: int8 failed: {e}", flush=True)
        conversions = run_conversions(run_dir, work, targets, progress)
        errors.update({t: r["error"] for t, r in conversions.items() if "error" in r})
        for scratch in (work / REPRESENTATIVE_FILE, work / "status.jsonl"):
            scratch.unlink(missing_ok=True)
        if (work / "convert.log").is_file() and not (work / "convert.log").read_text().strip():
            (work / "convert.log").unlink()

        written = [t for t in targets if t in TFLITE_FILES and "error" not in conversions.get(t, {"error": ""})]
        ops = {t: tflite_ops(work / TFLITE_FILES[t]) for t in written}
        parity = measure_parity(graphs, work, written, progress)
        result = {
            "run_dir": str(run_dir),
            "model": cfg.model.name,
            "formats_requested": formats,
            "errors": errors,
            **({"parity_error": parity.pop("error")} if "error" in parity else {}),
            **parity,
        }
        for t in written:
            entry = result.setdefault("formats", {}).setdefault(t, {"file": TFLITE_FILES[t], "bytes": (work / TFLITE_FILES[t]).stat().st_size})
            entry.update({"convert_seconds": conversions[t]["seconds"], "weight_bytes": tflite_weight_bytes(work / TFLITE_FILES[t]), "ops": ops[t],
                          "flex_ops": sorted(name for name in ops[t] if name.startswith("Flex"))})
        result["goals"] = goals(result)
        atomic_write_json(work / "parity.json", result)
        publish(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(parity_table(result))
        print(f"export: {len([t for t in formats if t not in errors])} of {len(formats)} formats -> {out_dir}"
              + (f"; failed: {', '.join(errors)}" if errors else ""))
    return result


def publish(work: Path, out_dir: Path) -> None:
    """Replace out_dir by work with renames only: readers see the old export or the new one, never a mix."""
    old = out_dir.with_name(f".export.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def goals(result: dict) -> dict:
    """The issue's targets, checked against the measured numbers (None when not measured)."""
    f = result.get("formats", {})

    def get(fmt, key):
        return f.get(fmt, {}).get(key)

    float_acc = get("float", "accuracy")

    def within(fmt):
        return None if get(fmt, "accuracy") is None or float_acc is None else float_acc - get(fmt, "accuracy") <= 0.02

    keras_ms = result.get("keras", {}).get("predict_ms", {}).get("median")
    float_ms = min((t["median"] for t in (get("float", "latency_ms") or {}).values()), default=None)  # the better thread count
    return {
        "float: top-1 agreement 100% and max |dprob| < 1e-4": None if get("float", "top1_agreement") is None
        else get("float", "top1_agreement") == 1.0 and get("float", "max_abs_diff_prob") < 1e-4,
        "float16: top-1 agreement >= 99.5%": None if get("float16", "top1_agreement") is None else get("float16", "top1_agreement") >= 0.995,
        "dynamic: accuracy within 2 points of float": within("dynamic"),
        "int8: accuracy within 2 points of float": within("int8"),
        "int8 file <= 30% of float": None if get("int8", "bytes") is None or get("float", "bytes") is None
        else get("int8", "bytes") <= 0.3 * get("float", "bytes"),
        "TFLite float >= 5x faster than Keras predict": None if not (keras_ms and float_ms) else keras_ms >= 5 * float_ms,
    }


def parity_table(result: dict) -> str:
    """The printed summary: one row per format."""
    lines = ["| format | file | size KB (weights) | top-1 agree | max abs dprob | accuracy | ms 1 thread (p50/p90) | ms 2 threads (p50/p90) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for target, r in result.get("formats", {}).items():
        lat = r.get("latency_ms", {})
        ms = {k: f"{t['median']:.1f} / {t['p90']:.1f}" for k, t in lat.items()}
        agree = f"{r['top1_agreement']:.1%}" if "top1_agreement" in r else "-"
        diff = f"{r['max_abs_diff_prob']:.1e}" if "max_abs_diff_prob" in r else "-"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        weights = f" ({r['weight_bytes'] / 1024:.0f})" if "weight_bytes" in r else ""
        lines.append(f"| {target} | {r['file']} | {r['bytes'] / 1024:.0f}{weights} | {agree} | {diff} | {acc} | {ms.get('threads_1', '-')} | {ms.get('threads_2', '-')} |")
    if "keras" in result:
        k = result["keras"]
        lines.append(f"| keras | model.keras | - | (reference) | - | {k['accuracy']:.3f} | predict: {k['predict_ms']['median']:.1f} / {k['predict_ms']['p90']:.1f} | - |")
    if "saved_model" in result:
        lines.append(f"\nsaved_model/: max |dprob| vs the Keras graph {result['saved_model']['max_abs_diff_prob_vs_deployable_keras']:.1e}")
    if "test_clips" in result:
        lines.append(f"{result['test_clips']} raw test clips ({len(result['skipped'])} skipped)")
    if "parity_error" in result:
        lines.append(f"parity not measured: {result['parity_error']}")
    for fmt, error in result.get("errors", {}).items():
        lines.append(f"{fmt}: failed: {error}")
    return "\n".join(lines)

