"""Typed experiment configs: frozen dataclasses read from YAML.

A config has one section per stage plus a global seed:

    seed: 0
    data:       where the clips are and how they are split      (DataConfig)
    preprocess: frame sampling, frame encoder, MFCC             (PreprocessConfig)
    model:      which model and its RNN head                    (ModelConfig)
    train:      optimiser, schedule, regularisation, epochs     (TrainConfig)
    export:     deployment formats                              (ExportConfig)

Every field has a default and a one-line doc (`metadata["doc"]`); fields with a
closed set of values list them in `metadata["choices"]`. OmegaConf does the
merging and the type checks (YAML file, then `--set a.b=c` overrides); this
module turns its exceptions into one-line `UserError`s that name the file and
the key, and suggests the closest valid key for a typo. configs/README.md is
generated from these dataclasses (`actrec config docs`) and a
test keeps it in sync.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.errors import UserError

ENCODERS = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "inception_v3",
    "small_cnn",
    "none",
)
MODELS = ("video_rnn", "audio_rnn", "av_fusion", "hybrid")
EXPORT_FORMATS = ("saved_model", "float", "float16", "dynamic", "int8")


def option(default: Any, doc: str, choices: Sequence[Any] | None = None, minimum: float | None = None):
    """A config field: its default, a one-line doc, and optionally allowed values or a lower bound."""
    metadata = {"doc": doc, "choices": tuple(choices) if choices else None, "minimum": minimum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DataConfig:
    root: str = option("data/actions", "Dataset folder: a UCF101/HMDB51/Kinetics-style tree `<root>/<class>/<clip>` or Speech Commands `<root>/<word>/<utt>.wav`.")
    kind: str = option("video", "What the clips are: `video` (action clips, frames and their sound) or `speech` (WAV utterances).", ["video", "speech"])
    layout: str = option("auto", "How splits are found: `auto` detects split files, `ucf101` (classInd/trainlist/testlist), `speech_commands` (validation/testing lists), `folders` (no split files: split by group).", ["auto", "ucf101", "speech_commands", "folders"])
    manifest: Optional[str] = option(None, "A manifest.csv written by `actrec index` to use instead of indexing `root` (paths relative to `root`).")
    split_id: int = option(1, "Which official split file to use for UCF101-style data (trainlist0N/testlist0N).", minimum=1)
    val_fraction: float = option(0.15, "Fraction of training groups (actors/speakers) held out for validation when the layout has no validation list.", minimum=0.0)
    test_fraction: float = option(0.2, "Fraction of groups held out for test when the layout has no split files (`folders`).", minimum=0.0)
    classes: List[str] = option([], "Class names to use, in order; empty means every class found (sorted, or classInd.txt order).")


@dataclass(frozen=True)
class PreprocessConfig:
    modalities: List[str] = option(["video", "audio"], "Features to cache per clip: `video` (frame features or frames) and/or `audio` (MFCC sequence).")
    num_frames: int = option(16, "T: frames sampled per clip (shorter clips are padded and their true length stored for masking).", minimum=1)
    sampling: str = option("uniform", "Frame sampling: `uniform` (T frames spread over the clip), `segments` (TSN: a random frame per segment in training, the centre at eval), `multi_clip` (K windows of T consecutive-stride frames).", ["uniform", "segments", "multi_clip"])
    num_clips: int = option(1, "K: temporal windows per clip for `multi_clip` sampling (each cached as its own view).", minimum=1)
    image_size: int = option(112, "Side of the square frame fed to the encoder (aspect-preserving resize, then centre crop).", minimum=16)
    encoder: str = option("mobilenet_v3_small", "Frame encoder: a keras.applications CNN, `small_cnn`, or `none` to cache the uint8 frames themselves (for the hybrid model).", ENCODERS)
    frame_difference: bool = option(False, "Encode the difference of consecutive sampled frames (TSN's RGB difference: what moved, without the static background and the actor's colours) instead of the frames; the hybrid model and the exported graph compute it in-model.")
    weights: Optional[str] = option(None, "Encoder weights: `imagenet` (downloaded once, needs the network), a path to a .weights.h5 file (e.g. a hybrid run's frame_encoder.weights.h5; with encoder `none` it starts the hybrid model's small_cnn), or null (random init).")
    encoder_backend: str = option("tflite", "Run the frozen encoder through the TFLite interpreter (XNNPACK, ~8x faster on CPU) or through Keras.", ["tflite", "keras"])
    encoder_batch: int = option(64, "Frames per encoder call.", minimum=1)
    workers: int = option(2, "Worker processes that decode clips, compute MFCCs and (tflite backend) encode frames in parallel, each with its own interpreter of cpus/workers threads (0 = all in the main process).", minimum=0)
    shard_size: int = option(256, "Examples per TFRecord shard.", minimum=1)
    sample_rate: int = option(16000, "Audio is resampled to this rate (Hz) and made mono.", minimum=1000)
    audio_seconds: float = option(4.0, "Audio window per clip in seconds: longer audio is cropped (centre), shorter zero-padded with its true length stored.", minimum=0.1)
    n_mfcc: int = option(20, "MFCC coefficients per frame.", minimum=1)
    n_fft: int = option(512, "FFT size (samples) of the MFCC's STFT.", minimum=16)
    hop_length: int = option(160, "Hop between MFCC frames (samples); 160 = 10 ms at 16 kHz.", minimum=1)
    n_mels: int = option(40, "Mel bands before the DCT.", minimum=1)
    fmin: float = option(20.0, "Lowest mel band edge (Hz).", minimum=0.0)
    fmax: Optional[float] = option(None, "Highest mel band edge (Hz); null means sample_rate / 2.")
    deltas: bool = option(False, "Append delta and delta-delta coefficients (3 x n_mfcc features per frame).")
    normalize: str = option("utterance", "MFCC normalisation: per `utterance` (zero mean, unit variance per coefficient), over the training `dataset` (stats saved in index.json), or `none`.", ["utterance", "dataset", "none"])


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("av_fusion", "Model builder from the registry: `video_rnn` (frame features), `audio_rnn` (MFCCs), `av_fusion` (both), `hybrid` (end-to-end CNN-RNN on raw frames, plus raw audio if cached).", MODELS)
    cell: str = option("gru", "Recurrent cell.", ["lstm", "gru", "simple_rnn"])
    units: int = option(64, "Units per recurrent layer (per direction).", minimum=1)
    num_layers: int = option(1, "Stacked recurrent layers (all but the last return sequences).", minimum=1)
    bidirectional: bool = option(True, "Run each recurrent layer forwards and backwards.")
    merge_mode: str = option("concat", "How a bidirectional layer merges its two directions.", ["concat", "sum", "mul", "ave"])
    dropout: float = option(0.3, "Dropout on RNN inputs and before the classifier.", minimum=0.0)
    recurrent_dropout: float = option(0.0, "Dropout on the recurrent state (slower: disables the fused kernel).", minimum=0.0)
    pooling: str = option("attention", "How the sequence of states becomes one vector: `last` state, `mean` over valid steps, or learned `attention` weights over steps.", ["last", "mean", "attention"])
    fusion: str = option("mid", "Audio-visual fusion: `late` averages the two heads' probabilities, `mid` concatenates their pooled states and classifies.", ["late", "mid"])
    audio_stack: int = option(1, "MFCC frames stacked into one audio RNN step (low frame rate: 3-4 = 30-40 ms steps, a 3-4x shorter RNN).", minimum=1)
    l2: float = option(1e-4, "L2 penalty on kernel weights (0 = off).", minimum=0.0)
    encoder_trainable: str = option("false", "Hybrid model: train the CNN `false` (frozen), `true` (all layers) or `last_n` layers.", ["false", "true", "last_n"])
    encoder_last_n: int = option(10, "Hybrid model: layers trained when encoder_trainable is `last_n`.", minimum=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(40, "Maximum number of epochs.", minimum=1)
    batch_size: int = option(16, "Examples per batch.", minimum=1)
    optimizer: str = option("adamw", "Optimiser.", ["adam", "adamw"])
    learning_rate: float = option(1e-3, "Peak learning rate.", minimum=0.0)
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay.", minimum=0.0)
    clipnorm: float = option(1.0, "Clip each gradient to this L2 norm (0 = off): keeps RNN updates bounded when gradients explode.", minimum=0.0)
    schedule: str = option("cosine", "Learning-rate schedule: `cosine` decay over all epochs, `plateau` (halve when val loss stalls), or `constant`.", ["cosine", "plateau", "constant"])
    early_stopping: int = option(10, "Stop after this many epochs without val-loss improvement and restore the best weights (0 = off).", minimum=0)
    class_weights: bool = option(False, "Weight the loss by inverse class frequency (for imbalanced data).")
    augment: bool = option(True, "During training: temporal jitter of frames, SpecAugment masks on MFCCs, and flips, crops and colour jitter of raw frames (hybrid).")
    time_masks: int = option(2, "SpecAugment: time masks per MFCC sequence.", minimum=0)
    time_mask_width: int = option(10, "SpecAugment: maximum width of a time mask (frames).", minimum=0)
    freq_masks: int = option(2, "SpecAugment: frequency masks per MFCC sequence.", minimum=0)
    freq_mask_width: int = option(3, "SpecAugment: maximum width of a frequency mask (coefficients).", minimum=0)
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy loss.", minimum=0.0)
    shuffle_buffer: int = option(1024, "Examples in the tf.data shuffle buffer.", minimum=1)
    cache: bool = option(True, "Cache decoded examples in memory after the first epoch (when the dataset fits).")
    source: str = option("features", "What training reads: the cached `features`, or `raw_audio`: the WAVs themselves, decoded and resampled in tf.data by tensorflow-io, for an audio_rnn that computes its MFCCs in-model (speech runs with preprocess.encoder none).", ["features", "raw_audio"])
    strategy: str = option("default", "tf.distribute strategy: `default` (one device), `mirrored`, `multi_worker` (TF_CONFIG).", ["default", "mirrored", "multi_worker"])


@dataclass(frozen=True)
class ExportConfig:
    formats: List[str] = option(list(EXPORT_FORMATS), "Formats to write: saved_model, float, float16, dynamic (dynamic-range int8 weights), int8 (full integer).")
    representative_samples: int = option(32, "Training examples used to calibrate int8 quantisation.", minimum=1)
    latency_runs: int = option(20, "Timed runs per format for the latency columns of parity.json.", minimum=1)


@dataclass(frozen=True)
class Config:
    seed: int = option(0, "Global seed: data generation, splits, shuffling, initialisation (as far as TensorFlow allows).")
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "Where the clips are and how they are split."})
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig, metadata={"doc": "Frame sampling, frame encoder and MFCC."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "Model builder and RNN head."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "Optimiser, schedule, regularisation."})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"doc": "Deployment formats."})


# ----------------------------------------------------------------------------- loading


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader with YAML 1.2 booleans: only true/false are booleans, so the Speech Commands
    words `yes`, `no`, `on`, `off` stay strings (YAML 1.1 would turn them into True/False)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def safe_load_yaml(text: str):
    """yaml.safe_load (no object tags) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_SafeLoader)


def _all_keys() -> list[str]:
    """Dotted names of every field, e.g. ['seed', 'data.root', ...]."""
    keys = []
    for f in dataclasses.fields(Config):
        if f.name in _SECTIONS:
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(_SECTIONS[f.name])]
        else:
            keys.append(f.name)
    return keys


_SECTIONS = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "export": ExportConfig,
}


def _suggest(key: str) -> str:
    """' (did you mean ...?)' for the closest valid key or section name, or ''."""
    candidates = _all_keys() + list(_SECTIONS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(base, update: dict, source: str):
    """OmegaConf merge with its exceptions turned into one-line UserErrors naming source and key."""
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        raise UserError(f"{source}: unknown key '{key}'{_suggest(key)}") from None
    except OmegaConfBaseException as e:
        key = e.full_key or "?"
        expected = _expected_type(key)
        raise UserError(f"{source}: key '{key}' expected {expected}, got {e.value!r}" if hasattr(e, "value") else f"{source}: key '{key}': {e.msg.splitlines()[0]}") from None


def _expected_type(key: str) -> str:
    f = _field(key)
    if f is None:
        return "a valid value"
    return str(f.type).replace("typing.", "")


def _field(key: str) -> dataclasses.Field | None:
    section, _, name = key.rpartition(".")
    cls = _SECTIONS.get(section, Config if not section else None)
    return next((f for f in dataclasses.fields(cls) if f.name == name), None) if cls else None


def _validate(cfg: Config, source: str) -> None:
    """Check choices and lower bounds that the type system cannot express."""
    for key in _all_keys():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        meta = _field(key).metadata
        choices, minimum = meta.get("choices"), meta.get("minimum")
        if choices and value not in choices:
            raise UserError(f"{source}: key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        if minimum is not None and value is not None and value < minimum:
            raise UserError(f"{source}: key '{key}' must be >= {minimum}; got {value!r}")
    bad = [m for m in cfg.preprocess.modalities if m not in ("video", "audio")]
    if bad or not cfg.preprocess.modalities:
        raise UserError(f"{source}: key 'preprocess.modalities' must list 'video' and/or 'audio'; got {cfg.preprocess.modalities}")
    if cfg.data.kind == "speech" and "video" in cfg.preprocess.modalities:
        raise UserError(f"{source}: key 'preprocess.modalities' cannot include 'video' when data.kind is 'speech'")
    bad = [f for f in cfg.export.formats if f not in EXPORT_FORMATS]
    if bad:
        raise UserError(f"{source}: key 'export.formats' has unknown format {bad[0]!r}; known: {', '.join(EXPORT_FORMATS)}")
    if cfg.train.source == "raw_audio" and (cfg.data.kind != "speech" or cfg.preprocess.encoder != "none"):
        # WAVs only (video containers' audio is not read by tf.data), and encoder none makes preprocess,
        # evaluate and predict hand the model waveforms too.
        raise UserError(f"{source}: key 'train.source' raw_audio needs data.kind: speech and preprocess.encoder: none "
                        f"(got {cfg.data.kind} and {cfg.preprocess.encoder})")
    if cfg.preprocess.n_fft > cfg.preprocess.audio_seconds * cfg.preprocess.sample_rate and "audio" in cfg.preprocess.modalities:
        raise UserError(
            f"{source}: key 'preprocess.n_fft' ({cfg.preprocess.n_fft}) is longer than the audio window "
            f"({cfg.preprocess.audio_seconds} s x {cfg.preprocess.sample_rate} Hz samples)"
        )


def parse_overrides(overrides: Sequence[str]) -> dict:
    """['train.epochs=3', 'model.cell=lstm'] -> nested dict; values parsed as YAML scalars/lists."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            value = safe_load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: '{part}' is a value, not a section")
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults), apply `key=value` overrides, type-check and validate.

    Raises UserError with one line naming the file/key at fault.
    """
    merged = OmegaConf.structured(Config)
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = safe_load_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of sections (data, preprocess, model, train, export), got {type(data).__name__}")
        merged = _merge(merged, data, str(path))
        source = str(path)
    if overrides:
        merged = _merge(merged, parse_overrides(overrides), "--set")
        source = f"{source} + --set"
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"{source}: {str(e).splitlines()[0]}") from None
    _validate(cfg, source)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def section_hash(*sections: Any) -> str:
    """A short stable hash of config sections (e.g. what decides the cached features)."""
    blob = json.dumps([dataclasses.asdict(s) for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def replace(cfg: Config, **sections: Any) -> Config:
    """A copy of cfg with whole sections or fields replaced: replace(cfg, train={'epochs': 2})."""
    changes = {}
    for name, value in sections.items():
        if isinstance(value, dict):
            changes[name] = dataclasses.replace(getattr(cfg, name), **value)
        else:
            changes[name] = value
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- reference doc


def markdown_reference() -> str:
    """The config reference (configs/README.md body): every key, its type, default and doc."""
    lines = [
        "# Config reference",
        "",
        "Generated from `pipeline/config.py` by `actrec config docs > configs/README.md`;",
        "a test fails when the two drift apart. Every key has a default; a YAML file only lists what it changes,",
        "and `--set section.key=value` overrides any key from the command line. Unknown keys are errors.",
        "",
    ]
    top = [f for f in dataclasses.fields(Config) if f.name not in _SECTIONS]
    lines += ["## (top level)", "", "| key | type | default | what it is |", "|---|---|---|---|"]
    lines += [_row(f.name, f) for f in top]
    for name, cls in _SECTIONS.items():
        doc = next(f for f in dataclasses.fields(Config) if f.name == name).metadata["doc"]
        lines += ["", f"## {name}", "", doc, "", "| key | type | default | what it is |", "|---|---|---|---|"]
        lines += [_row(f"{name}.{f.name}", f) for f in dataclasses.fields(cls)]
    return "\n".join(lines) + "\n"


def _row(key: str, f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kind = str(f.type).replace("typing.", "")
    doc = f.metadata["doc"]
    if f.metadata.get("choices"):
        doc += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
    return f"| `{key}` | {kind} | `{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}` | {doc} |"
