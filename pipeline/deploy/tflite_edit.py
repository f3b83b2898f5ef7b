"""TFLite flatbuffer post-processing: pure bytes -> bytes functions on what the converter wrote (readers: tflite_read).

    converter output (bytes) --edits below--> the .tflite file (bytes), same outputs within the stated error

Each edit reads the flatbuffer into flatbuffer_utils' object API (a ModelT), changes tables and buffers,
and writes it back with every distinct vector written once (`_serialize`):

    copy_while_passthrough_outputs   WHILE bodies return a RESHAPE copy of each pass-through input (what the
                                     int8 calibrator needs, see deploy.convert.calibratable_while_loops)
    fill_splat_constants             big constants of one repeated value that only WHILE ops read -> FILL
    int8_float_constants             big float32 constants -> int8 per row + DEQUANTIZE (the int8 file)
    float16_float_constants          mid-size float32 constants -> float16 + DEQUANTIZE (the int8 file)
    without_calibration              calibration statistics dropped from kept-float tensors (and a stream's inputs)
    dequantize_kept_float            int8 weights of the ops `kept_float` names -> float32 (the dynamic file)
    drop_metadata                    a metadata entry removed (the float16 file's fp16-inference hint)
    set_metadata                     a named metadata entry and its buffer (TFLite Model Metadata, deploy.metadata)
    widen_small_float16_constants    small float16 constants + their DEQUANTIZE -> float32 constants
    strip_tensor_names               names of intermediate tensors dropped

TensorFlow's flatbuffer modules are imported inside the functions (importing this module is cheap).
"""

from __future__ import annotations

import functools
from collections.abc import Collection

import numpy as np

from pipeline.runtime.tflite import OUTPUT

TFLITE_FILE_IDENTIFIER = b"TFL3"  # the 4 bytes after the root offset of every .tflite file


# ----------------------------------------------------------------------------- reading and writing the flatbuffer


def read_model(content: bytes):
    """The flatbuffer as a ModelT (flatbuffer_utils' object API: every table and vector a Python object)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(content))


def builtin_code(model, opcode_index: int) -> int:
    """The BuiltinOperator value of the model's operator code `opcode_index`.

    Codes up to 127 are also stored in the old one-byte field `deprecatedBuiltinCode`, newer ones only in
    `builtinCode`, and older files set only the old field: the larger of the two is the operator
    (what TFLite's own readers and flatbuffer_utils.opcode_to_name do).
    """
    code = model.operatorCodes[opcode_index]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def op_name(model, opcode_index: int) -> str:
    """The operator's name: the BuiltinOperator name (`WHILE`, `CONV_2D`, ...), or a custom op's custom code (`Flex...`)."""
    from tensorflow.lite.python import schema_py_generated as schema

    code = builtin_code(model, opcode_index)
    if code == schema.BuiltinOperator.CUSTOM:
        return bytes(model.operatorCodes[opcode_index].customCode).decode()
    return _builtin_names().get(code, f"BUILTIN_{code}")


@functools.cache
def _builtin_names() -> dict[int, str]:
    """BuiltinOperator value -> its name (the first name, should a value have two)."""
    from tensorflow.lite.python import schema_py_generated as schema

    return {value: name for name, value in reversed(vars(schema.BuiltinOperator).items()) if not name.startswith("_")}


def _serialize(model) -> bytes:
    """The flatbuffer of a ModelT (flatbuffer_utils' object API), each distinct vector written once.

    flatbuffer_utils writes every vector anew: the per-channel zero points (int64, all 0) of each
    int8 weight and bias, and the shape of each tensor. A flatbuffer may point many tables at one
    vector (the format is read-only, the TFLite verifier accepts it); shared, the int8 action model
    is 14 KB smaller (398 -> 383 KB; its float file 1337 -> 1328 KB). Buffer data (uint8) is left
    to `deduplicate_readonly_buffers`, which knows which constants may share.
    """
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size: int):
            super().__init__(size)
            self.written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):
            if x.dtype == np.uint8:
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self.written:
                self.written[key] = super().CreateNumpyVector(x)
            return self.written[key]

    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _opcode_index(model, builtin: int) -> int:
    """Index of `builtin` in the model's operator codes, added when missing."""
    from tensorflow.lite.python import schema_py_generated as schema

    for i in range(len(model.operatorCodes)):
        if builtin_code(model, i) == builtin:
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


# ----------------------------------------------------------------------------- edits


def copy_while_passthrough_outputs(content: bytes) -> bytes:
    """Each WHILE body output that is the body's own input tensor becomes a RESHAPE (to the same shape) of it."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_model(content)
    bodies = {op.builtinOptions.bodySubgraphIndex for subgraph in model.subgraphs for op in subgraph.operators
              if builtin_code(model, op.opcodeIndex) == schema.BuiltinOperator.WHILE}
    if not bodies:  # nothing to copy, and no RESHAPE code added that no op uses (the calibrator refuses those)
        return content
    reshape = _opcode_index(model, schema.BuiltinOperator.RESHAPE)
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


def _computed_constants(content: bytes, source) -> bytes:
    """The flatbuffer with each constant tensor for which source(model, subgraph, index, data) gives
    (operator code index, input tensor indices) computed by that op instead, at the start of its subgraph.

    `source` adds the op's inputs (constants: first is in order) or returns None to keep the tensor.
    A buffer can be shared by several tensors (across subgraphs too): it is emptied once none reads it.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_model(content)
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

    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32}

    def fill(model, subgraph, index, data):
        tensor = subgraph.tensors[index]
        readers = {builtin_code(model, op.opcodeIndex) for op in subgraph.operators if index in op.inputs}
        if tensor.type not in dtypes or len(data) < 4 * min_elements or readers != {schema.BuiltinOperator.WHILE}:
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


def kept_float(content: bytes, recurrent: bool = False) -> list[str]:
    """Tensors the int8 graph computes in float: the MFCC, the motion features, their normalisations, attention pooling and
    the classifier (recurrent: also the RNN cells' ops, `gru_cell/`, `lstm_cell/`; their weights stay int8, int8_float_constants).

    Found by the Keras layer scopes in the TFLite names (`mfcc/`, `mfcc_norm/`, `motion/`, `video_norm/`,
    `audio_attention/`, ...; `stream_control/`: a streaming step's counts, 0/1 state blends and pooling windows). Attention pooling gives padded steps a score of -1e9: an int8 scale that spans it
    rounds every real score to the same value (measured: the action model fell to chance, 13%, with it quantized).
    The motion features are products of pixel gradients whose channels span different ranges (a strip's flow of a
    few tenths of a pixel beside log energies of several units): one int8 scale for all of them lost the flow.
    The classifier (each `*_probs` Dense: `head_probs/`, `fused_probs/`, ...) and its softmax (the signature output): a
    test clip surer than every calibration clip has logits past their calibrated range, and int8 clipped the two
    largest to one value, a tie at 0.5 each (measured in docs/export.md).
    """
    import re

    model = read_model(content)
    scopes = "mfcc|mfcc_norm|motion|video_norm|stream_control|\\w+_attention|\\w+_probs" + ("|gru_cell|lstm_cell" if recurrent else "")
    kept = re.compile(rf"(^|/)({scopes})(_\d+)?/")
    # the softmax's output is a signature output, named after the signature, not the layer
    outputs = {(sig.subgraphIndex, t.tensorIndex) for sig in model.signatureDefs for t in sig.outputs
               if t.name.decode() == OUTPUT}
    names = []
    for s, subgraph in enumerate(model.subgraphs):
        for t, tensor in enumerate(subgraph.tensors):
            name = (tensor.name or b"").decode()
            if any(kept.search(part) for part in name.split(";")) or (s, t) in outputs:
                names.append(name)
    return names


def without_calibration(content: bytes, names: Collection[str], signature: str | None = None) -> bytes:
    """The calibrated model without statistics on the tensors `names` and, given a signature, its inputs (see
    deploy.convert.convert's float_inputs): the quantizer quantizes any slice, reshape, split or concatenation whose
    tensors carry statistics, denylisted or not; and a step's states, rounded to 8 bits at every step, drift."""
    model = read_model(content)
    inputs = {(sig.subgraphIndex, t.tensorIndex) for sig in model.signatureDefs if sig.signatureKey.decode() == signature for t in sig.inputs}
    for s, subgraph in enumerate(model.subgraphs):
        for t, tensor in enumerate(subgraph.tensors):
            if (tensor.name or b"").decode() in names or (s, t) in inputs:
                tensor.quantization = None
    return _serialize(model)


def dequantize_kept_float(content: bytes) -> bytes:
    """Give the int8 weights of `kept_float` ops (the MFCC's mel projection) back as float32, dequantized per channel.

    A dynamic-range op with int8 weights quantizes its input on the fly; with float weights it runs in float.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_model(content)
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
    model = read_model(content)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name]
    return _serialize(model)


def set_metadata(content: bytes, name: str, data: bytes) -> bytes:
    """The flatbuffer with metadata entry `name` pointing at a new buffer holding `data` (an earlier `name` replaced)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_model(content)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name.encode(), _add_buffer(model, np.frombuffer(data, np.uint8))
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name] + [entry]
    return _serialize(model)


def widen_small_float16_constants(content: bytes, min_elements: int = FLOAT16_MIN_ELEMENTS) -> bytes:
    """Replace each float16 constant of fewer than min_elements values, and the DEQUANTIZE op that widened
    it at run time, by a float32 constant (the op's output tensor, now holding the values)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_model(content)
    for subgraph in model.subgraphs:
        kept_ops = []
        for op in subgraph.operators:
            if builtin_code(model, op.opcodeIndex) == schema.BuiltinOperator.DEQUANTIZE:
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
    model = read_model(content)
    model.description = None
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs.tolist()) | set(subgraph.outputs.tolist())
        for i, tensor in enumerate(subgraph.tensors):
            if i not in keep:
                tensor.name = None
    return _serialize(model)
