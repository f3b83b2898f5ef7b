"""TFLite Model Metadata: what Android / iOS / web runtimes (MediaPipe Tasks, the TFLite Support library) read from a
.tflite file to feed it and to name its outputs, written from the metadata schema (metadata_schema.fbs, "M001").

    preprocessing.json's inputs / outputs + labels  --model_metadata-->  ModelMetadata flatbuffer (bytes)
    .tflite bytes + that flatbuffer + {labels.txt}   --with_metadata-->   .tflite bytes: a buffer named TFLITE_METADATA
                                                                           in the model, the files zipped onto its end

    ModelMetadata: name, description, version, author, min_parser_version, associated_files [labels.txt]
      subgraph_metadata[0]:
        input_tensor_metadata   one per input, in the subgraph's input order: name, description,
                                content (frames: ImageProperties RGB S x S; waveform / samples: AudioProperties
                                sample rate, 1 channel; others: FeatureProperties), stats (value range)
        output_tensor_metadata  probabilities: labels.txt as TENSOR_AXIS_LABELS (what names the categories)

preprocessing.json stays the human-readable twin. Tables are written with the flatbuffers package's Builder,
field by field in schema order (`_Table`); the schema's own generated reader reads them back in the tests.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from pipeline.runtime.tflite import FRAME, OUTPUT, SAMPLES

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry runtimes look for
FILE_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
AUTHOR = "actrec"
# Parser versions of the schema: AudioProperties came with 1.3.0; files without it need only 1.0.0.
MIN_PARSER_VERSION = {True: "1.3.0", False: "1.0.0"}

# enum values of metadata_schema.fbs
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
RGB = 1  # ColorSpaceType
FEATURE_PROPERTIES, IMAGE_PROPERTIES, AUDIO_PROPERTIES = 1, 2, 4  # ContentProperties union members
AUDIO_INPUTS = ("waveform", SAMPLES)  # inputs of mono float samples in [-1, 1]: the whole window, a stream's hop
IMAGE_INPUTS = ("frames", FRAME)  # inputs of uint8 RGB frames: the whole clip's, a stream's newest


# ----------------------------------------------------------------------------- a minimal flatbuffers table writer


@dataclass(frozen=True)
class UInt:
    value: int  # a uint32 field


@dataclass(frozen=True)
class Byte:
    value: int  # a ubyte field (enums, union types)


@dataclass(frozen=True)
class Floats:
    values: tuple  # a [float] vector


class _Table:
    """One table: its fields in schema slot order (None: absent). A field is a str, UInt, Byte, Floats, a _Table,
    or a list of _Tables / strs (a vector)."""

    def __init__(self, *fields):
        self.fields = fields

    def write(self, builder) -> int:
        offsets = {i: _write_child(builder, f) for i, f in enumerate(self.fields) if f is not None and not isinstance(f, (UInt, Byte))}
        builder.StartObject(len(self.fields))
        for i, field in enumerate(self.fields):
            if isinstance(field, UInt):
                builder.PrependUint32Slot(i, field.value, 0)
            elif isinstance(field, Byte):
                builder.PrependUint8Slot(i, field.value, 0)
            elif field is not None:
                builder.PrependUOffsetTRelativeSlot(i, offsets[i], 0)
        return builder.EndObject()


def _write_child(builder, field) -> int:
    if isinstance(field, str):
        return builder.CreateString(field)
    if isinstance(field, _Table):
        return field.write(builder)
    if isinstance(field, Floats):
        builder.StartVector(4, len(field.values), 4)
        for value in reversed(field.values):
            builder.PrependFloat32(float(value))
        return builder.EndVector()
    children = [_write_child(builder, item) for item in field]  # a vector of tables or strings
    builder.StartVector(4, len(children), 4)
    for child in reversed(children):
        builder.PrependUOffsetTRelative(child)
    return builder.EndVector()


# ----------------------------------------------------------------------------- the tables actrec writes


def associated_file(name: str, description: str, file_type: int) -> _Table:
    return _Table(name, description, Byte(file_type))  # AssociatedFile: name, description, type


def tensor_metadata(spec: dict, sample_rate: int, labels: bool = False) -> _Table:
    """TensorMetadata of one preprocessing.json input or output entry {name, shape, dtype, doc}."""
    name, shape = spec["name"], spec["shape"]
    stats = None
    if name in IMAGE_INPUTS:  # uint8 RGB [1, T, S, S, 3] or a stream's newest frame [1, S, S, 3]
        content = _Table(Byte(IMAGE_PROPERTIES), _Table(Byte(RGB), _Table(UInt(shape[-2]), UInt(shape[-3]))))
        stats = _Table(Floats((255.0,)), Floats((0.0,)))  # Stats: max, min
    elif name in AUDIO_INPUTS:
        content = _Table(Byte(AUDIO_PROPERTIES), _Table(UInt(sample_rate), UInt(1)))
        stats = _Table(Floats((1.0,)), Floats((-1.0,)))
    else:
        content = _Table(Byte(FEATURE_PROPERTIES), _Table())
    files = [associated_file(LABELS_FILE, "class names, one per line, in output order", TENSOR_AXIS_LABELS)] if labels else None
    # TensorMetadata: name, description, dimension_names, content, process_units, stats, associated_files
    return _Table(name, spec.get("doc", ""), None, content, None, stats, files)


def model_metadata(name: str, description: str, version: str, inputs: list[dict], outputs: list[dict], sample_rate: int) -> bytes:
    """The ModelMetadata flatbuffer (file identifier M001) of one .tflite file.

    inputs / outputs: preprocessing.json entries in the subgraph's order; the output named OUTPUT (probabilities) gets
    labels.txt as its axis labels.
    """
    import flatbuffers

    audio = any(s["name"] in AUDIO_INPUTS for s in inputs)
    subgraph = _Table(name, description,  # SubGraphMetadata: name, description, input_tensor_metadata, output_tensor_metadata
                      [tensor_metadata(s, sample_rate) for s in inputs],
                      [tensor_metadata(s, sample_rate, labels=s["name"] == OUTPUT) for s in outputs])
    root = _Table(name, description, version, [subgraph], AUTHOR, None,  # ModelMetadata: name, description, version,
                  [associated_file(LABELS_FILE, "class names", TENSOR_AXIS_LABELS)],  # subgraph_metadata, author, license,
                  MIN_PARSER_VERSION[audio])  # associated_files, min_parser_version
    builder = flatbuffers.Builder(1024)
    builder.Finish(root.write(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


# ----------------------------------------------------------------------------- attaching it to a .tflite file

# export target -> (its preprocessing.json section, what the file is)
TARGETS = {"head_float": ("head", "the RNN head alone, on cached frame features / MFCCs"),
           "stream_float": ("stream", "streaming step: the newest hop of audio (or frame) and every state in, probabilities and states out"),
           "stream_int8": ("stream", "streaming step (int8): the newest hop of audio (or frame) and every state in, probabilities and states out"),
           "mediapipe": ("mediapipe", "one waveform window in (MediaPipe Tasks AudioClassifier)")}


def export_metadata(content: bytes, target: str, preprocessing: dict, labels: list[str]) -> bytes:
    """`content`, the .tflite file of export target `target`, with its metadata (from its preprocessing.json section)
    and labels.txt attached."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.deploy.tflite_read import signature_tensor_names

    section_name, kind = TARGETS.get(target, (None, f"whole clip, {target}"))
    section = preprocessing[section_name] if section_name else preprocessing
    specs = {s["name"]: s for s in [*section["inputs"], *section.get("outputs", preprocessing["outputs"])]}
    inputs, outputs = signature_tensor_names(content, section.get("signature", preprocessing["signature"]))
    sample_rate = section.get("sample_rate") or preprocessing.get("audio", {}).get("sample_rate", 0)
    try:
        package_version = version("actrec")
    except PackageNotFoundError:  # run from a checkout that was never installed
        package_version = "unknown"
    shown = ", ".join(labels[:12]) + (", ..." if len(labels) > 12 else "")
    metadata = model_metadata(f"actrec {preprocessing['model']}", f"{kind}; {len(labels)} classes: {shown}", package_version,
                              [specs[n] for n in inputs], [specs[n] for n in outputs], sample_rate)
    return with_metadata(content, metadata, {LABELS_FILE: "".join(f"{c}\n" for c in labels).encode()})



def with_metadata(content: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """The .tflite bytes with `metadata` in the buffer named TFLITE_METADATA and `files` zipped onto the end
    (where MediaPipe and the TFLite Support library look for associated files)."""
    from pipeline.deploy.tflite_edit import set_metadata

    out = io.BytesIO(set_metadata(content, METADATA_NAME, metadata))
    with zipfile.ZipFile(out, "a") as archive:  # appended: the flatbuffer is read from the front, the zip from the back
        for name, data in files.items():  # a fixed time stamp: the same export gives the same bytes
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()
