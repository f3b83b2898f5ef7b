"""Typed experiment configs: frozen dataclasses read from YAML.

A config has one section per stage plus a global seed:

    seed: 0
    data:       where the clips are and how they are split      (DataConfig)
    preprocess: frame sampling, frame encoder, MFCC             (PreprocessConfig)
    model:      which model and its RNN head                    (ModelConfig)
    train:      optimiser, schedule, regularisation, epochs     (TrainConfig)
    export:     deployment formats                              (ExportConfig)

Every field has a default and a one-line doc (`metadata["doc"]`); fields with a
closed set of values list them in `metadata["choices"]`, numbers their range
(`minimum`/`maximum` inclusive, `above`/`below` exclusive). OmegaConf does the
merging and the type checks (YAML file, then `--set a.b=c` overrides); this
module turns its exceptions into one-line `UserError`s that name the file and
the key, and suggests the closest valid key for a typo. Hostile files (binary,
not UTF-8, alias bombs, a directory) are one-line errors too. configs/README.md is
generated from these dataclasses (`actrec config docs`) and a
test keeps it in sync.

`--config` takes a path or a shipped config's name (`commands`: configs/<name>.yaml,
installed as package data in pipeline/configs/; see `shipped_configs`, `config_path`).
`features_hash` is the feature-cache key: seed + data/preprocess settings, less the
keys declared `affects_features=False` (where the data is, how fast it is processed).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.errors import UserError
from pipeline.features.motion import STRIPS
from pipeline.yaml_safe import safe_load_yaml

ENCODERS = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "inception_v3",
    "small_cnn",
    "motion",
    "none",
)
MODELS = ("video_rnn", "audio_rnn", "av_fusion", "hybrid")
EXPORT_FORMATS = ("saved_model", "float", "float16", "dynamic", "int8")


def option(
    default: Any,
    doc: str,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
    affects_features: bool = True,
):
    """A config field: its default, a one-line doc, and optionally its allowed values or range.

    minimum/maximum are inclusive bounds, above/below exclusive ones (dropout: minimum=0, below=1 is [0, 1)).
    affects_features=False marks an execution setting of the data/preprocess sections: it changes how fast or
    where features are made, never their values, so it stays out of `features_hash` (the feature-cache key).
    """
    metadata = {"doc": doc, "choices": tuple(choices) if choices else None, "minimum": minimum, "maximum": maximum,
                "above": above, "below": below, "affects_features": affects_features}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def allowed_range(meta: Any) -> str | None:
    """The range a field's metadata allows, as text: '[0, 1)', '>= 1', '<= 600' or None when unbounded."""
    low = (f"[{_number(meta['minimum'])}" if meta.get("minimum") is not None
           else f"({_number(meta['above'])}" if meta.get("above") is not None else None)
    high = (f"{_number(meta['maximum'])}]" if meta.get("maximum") is not None
            else f"{_number(meta['below'])})" if meta.get("below") is not None else None)
    if low and high:
        return f"{low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return None


def _in_range(value: float, meta: Any) -> bool:
    return not ((meta.get("minimum") is not None and value < meta["minimum"])
                or (meta.get("maximum") is not None and value > meta["maximum"])
                or (meta.get("above") is not None and value <= meta["above"])
                or (meta.get("below") is not None and value >= meta["below"]))


@dataclass(frozen=True)
class DataConfig:
    root: str = option("data/actions", "Dataset folder: a UCF101/HMDB51/Kinetics-style tree `<root>/<class>/<clip>` or Speech Commands `<root>/<word>/<utt>.wav`.", affects_features=False)
    kind: str = option("video", "What the clips are: `video` (action clips, frames and their sound) or `speech` (WAV utterances).", ["video", "speech"])
    layout: str = option("auto", "How splits are found: `auto` detects split files, `ucf101` (classInd/trainlist/testlist), `speech_commands` (validation/testing lists), `folders` (no split files: split by group).", ["auto", "ucf101", "speech_commands", "folders"])
    manifest: Optional[str] = option(None, "A manifest.csv written by `actrec index` to use instead of indexing `root` (paths relative to `root`).")
    split_id: int = option(1, "Which official split file to use for UCF101-style data (trainlist0N/testlist0N).", minimum=1, maximum=99)
    val_fraction: float = option(0.15, "Fraction of training groups (actors/speakers) held out for validation when the layout has no validation list (0 = none); with test_fraction it must leave groups to train (sum below 1).", minimum=0.0, below=1.0)
    test_fraction: float = option(0.2, "Fraction of groups held out for test when the layout has no split files (`folders`).", minimum=0.0, below=1.0)
    classes: List[str] = option([], "Class names to use, in order; empty means every class found (sorted, or classInd.txt order).")
    keywords: List[str] = option([], "Speech only: the target words of an open-set keyword spotter (Speech Commands v2-12): the classes become these words, `_silence_` (1-s windows of `<root>/_background_noise_/`) and `_unknown_` (every other word folder). Empty: every folder is a class.")
    unknown_fraction: float = option(0.1, "With data.keywords: share of each training epoch drawn from `_unknown_` words (0 = no `_unknown_` label); validation and test hold the same share.", minimum=0.0, below=1.0)
    silence_fraction: float = option(0.1, "With data.keywords: share of each training epoch drawn from `_silence_` windows (0 = no `_silence_` label); validation and test hold the same share.", minimum=0.0, below=1.0)


@dataclass(frozen=True)
class PreprocessConfig:
    modalities: List[str] = option(["video", "audio"], "Features to cache per clip: `video` (frame features or frames) and/or `audio` (MFCC sequence).")
    num_frames: int = option(16, "T: frames sampled per clip (shorter clips are padded and their true length stored for masking).", minimum=1, maximum=1024)
    sampling: str = option("uniform", "Frame sampling: `uniform` (T frames spread over the clip), `segments` (TSN: a random frame per segment in training, the centre at eval), `multi_clip` (K windows of T consecutive-stride frames).", ["uniform", "segments", "multi_clip"])
    num_clips: int = option(1, "K: temporal windows per clip for `multi_clip` sampling (each cached as its own view).", minimum=1, maximum=64)
    image_size: int = option(112, "Side of the square frame fed to the encoder (aspect-preserving resize, then centre crop).", minimum=16, maximum=1024)
    encoder: str = option("mobilenet_v3_small", "Frame encoder: a keras.applications CNN, `small_cnn`, `motion` (optical flow pooled in horizontal strips: no weights, works offline; pipeline/features/motion.py), or `none` to cache the uint8 frames themselves (for the hybrid model).", ENCODERS)
    frame_difference: bool = option(False, "Encode the difference of consecutive sampled frames (TSN's RGB difference: what moved, without the static background and the actor's colours) instead of the frames; the hybrid model and the exported graph compute it in-model.")
    weights: Optional[str] = option(None, "Encoder weights: `imagenet` (downloaded once, needs the network), a path to a .weights.h5 file (e.g. a hybrid run's frame_encoder.weights.h5; with encoder `none` it starts the hybrid model's small_cnn), or null (random init).")
    encoder_backend: str = option("tflite", "Run the frozen encoder through the TFLite interpreter (XNNPACK, ~8x faster on CPU) or through Keras.", ["tflite", "keras"])
    encoder_batch: int = option(64, "Frames per encoder call.", minimum=1, maximum=4096, affects_features=False)
    workers: int = option(2, "Worker processes that decode clips, compute MFCCs and (tflite backend) encode frames in parallel, each with its own interpreter of cpus/workers threads (0 = all in the main process).", minimum=0, maximum=256, affects_features=False)
    shard_size: int = option(256, "Examples per TFRecord shard.", minimum=1, maximum=100_000)
    sample_rate: int = option(16000, "Audio is resampled to this rate (Hz) and made mono.", minimum=1000, maximum=192_000)
    audio_seconds: float = option(4.0, "Audio window per clip in seconds: longer audio is cropped (centre), shorter zero-padded with its true length stored.", minimum=0.1, maximum=600.0)
    n_mfcc: int = option(20, "MFCC coefficients per frame (at most n_mels: the DCT of n_mels bands has n_mels coefficients).", minimum=1, maximum=128)
    n_fft: int = option(512, "FFT size (samples) of the MFCC's STFT.", minimum=16, maximum=65536)
    hop_length: int = option(160, "Hop between MFCC frames (samples); 160 = 10 ms at 16 kHz.", minimum=1, maximum=65536)
    n_mels: int = option(40, "Mel bands before the DCT.", minimum=1, maximum=512)
    fmin: float = option(20.0, "Lowest mel band edge (Hz), below the highest.", minimum=0.0)
    fmax: Optional[float] = option(None, "Highest mel band edge (Hz), at most sample_rate / 2 (the Nyquist frequency); null means sample_rate / 2.", above=0.0)
    deltas: bool = option(False, "Append delta and delta-delta coefficients (3 x n_mfcc features per frame).")
    mfcc_framing: str = option("centred", "MFCC frames `centred` on each hop (librosa's default; dB floor 80 below the utterance's loudest bin) or `causal`: each frame ends at its hop and has a fixed floor, so a streaming model computes the same frames from the newest samples (see model.streamable).", ["centred", "causal"])
    keep_waveform: bool = option(False, "Also cache each audio window's samples (float32 [N]), so training can augment the sound itself (train.time_shift, speed_change, background_mix) and compute its MFCCs in tf.data; `encoder: none` always keeps them.")
    normalize: str = option("utterance", "MFCC normalisation: per `utterance` (zero mean, unit variance per coefficient), over the training `dataset` (stats saved in index.json), `running` (each frame with the statistics of the frames up to it, starting from the dataset's: causal, so it streams), or `none`.", ["utterance", "dataset", "running", "none"])

    @property
    def keeps_waveform(self) -> bool:
        """Whether the audio window's samples are cached beside its MFCCs (float32 [N] `waveform`, `num_samples`)."""
        return self.encoder == "none" or self.keep_waveform


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("av_fusion", "Model builder from the registry: `video_rnn` (frame features), `audio_rnn` (MFCCs), `av_fusion` (both), `hybrid` (end-to-end CNN-RNN on raw frames, plus raw audio if cached).", MODELS)
    cell: str = option("gru", "Recurrent cell.", ["lstm", "gru", "simple_rnn"])
    units: int = option(64, "Units per recurrent layer (per direction).", minimum=1, maximum=4096)
    num_layers: int = option(1, "Stacked recurrent layers (all but the last return sequences).", minimum=1, maximum=16)
    bidirectional: bool = option(True, "Run each recurrent layer forwards and backwards.")
    merge_mode: str = option("concat", "How a bidirectional layer merges its two directions.", ["concat", "sum", "mul", "ave"])
    dropout: float = option(0.3, "Dropout on RNN inputs and before the classifier.", minimum=0.0, below=1.0)
    recurrent_dropout: float = option(0.0, "Dropout on the recurrent state (slower: disables the fused kernel).", minimum=0.0, below=1.0)
    pooling: str = option("attention", "How the sequence of states becomes one vector: `last` state, `mean` or `max` over valid steps, or learned `attention` weights over steps.", ["last", "mean", "max", "attention"])
    fusion: str = option("mid", "Audio-visual fusion: `late` averages the two heads' probabilities, `mid` concatenates their pooled states and classifies, `backoff` is mid with both modalities and each modality's own classifier when it is alone (a video without sound, `evaluate --drop`).", ["late", "mid", "backoff"])
    freq_conv: int = option(0, "Audio: before the RNN, convolve each frame's log-mel envelope (the inverse DCT of its MFCCs) over mel bands with this many filters (two layers, max-pooled over frequency), beside the MFCCs: a formant pattern moved by another vocal tract looks alike. 0 = off.", minimum=0, maximum=1024)
    audio_stack: int = option(1, "MFCC frames stacked into one audio RNN step (low frame rate: 3-4 = 30-40 ms steps, a 3-4x shorter RNN).", minimum=1, maximum=64)
    l2: float = option(1e-4, "L2 penalty on kernel weights (0 = off).", minimum=0.0, maximum=1.0)
    encoder_trainable: str = option("false", "Hybrid model: train the CNN `false` (frozen), `true` (all layers) or `last_n` layers.", ["false", "true", "last_n"])
    encoder_last_n: int = option(10, "Hybrid model: layers trained when encoder_trainable is `last_n`.", minimum=0, maximum=10_000)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(40, "Maximum number of epochs.", minimum=1, maximum=100_000)
    batch_size: int = option(16, "Examples per batch.", minimum=1, maximum=65536)
    optimizer: str = option("adamw", "Optimiser.", ["adam", "adamw"])
    learning_rate: float = option(1e-3, "Peak learning rate.", above=0.0)
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay.", minimum=0.0, maximum=1.0)
    clipnorm: float = option(1.0, "Clip each gradient to this L2 norm (0 = off): keeps RNN updates bounded when gradients explode.", minimum=0.0, maximum=1000.0)
    schedule: str = option("cosine", "Learning-rate schedule: `cosine` decay over all epochs, `plateau` (halve when val loss stalls), or `constant`.", ["cosine", "plateau", "constant"])
    early_stopping: int = option(10, "Stop after this many epochs without improvement (select_on) and restore the best weights (0 = off).", minimum=0, maximum=100_000)
    select_on: str = option("loss", "What early stopping and the restored best epoch go by: the validation `loss`, or the validation `accuracy` (ties: the lower loss). On a small validation set the loss can rise while the accuracy rises too (confident mistakes) and stop a model before it learns.", ["loss", "accuracy"])
    class_weights: bool = option(False, "Weight the loss by inverse class frequency (for imbalanced data).")
    augment: bool = option(True, "During training: temporal jitter of frames, SpecAugment masks on MFCCs, and flips, crops and colour jitter of raw frames (hybrid).")
    time_shift: float = option(0.1, "Runs with cached waveforms (preprocess.keep_waveform): shift each training utterance by up to this many seconds, the vacated part silent (0 = off).", minimum=0.0, maximum=10.0)
    speed_change: float = option(0.1, "Runs with cached waveforms: play each training utterance up to this fraction faster or slower, pitch and tempo together (0 = off).", minimum=0.0, below=0.5)
    vtlp: float = option(0.0, "Runs with cached waveforms: scale each training utterance's frequency axis by a random factor up to this fraction above or below 1 before the mel filterbank (vocal tract length perturbation: another speaker's formants, the timing unchanged) (0 = off).", minimum=0.0, below=0.5)
    background_mix: float = option(0.8, "Runs with cached waveforms and `_silence_` windows: probability of adding a random training background window to a training utterance (0 = off).", minimum=0.0, maximum=1.0)
    background_snr_db: List[float] = option([0.0, 20.0], "[low, high]: the signal-to-noise ratio (dB) of that background, drawn uniformly.")
    cut_words: float = option(0.0, "Speech runs with cached waveforms and an `_unknown_` label: the share of training words (keywords and other words) cut short, from a fifth to four fifths of the word, ending where the window ends, and relabelled `_unknown_`: a stream's windows end inside words as they are said, and the start of a word must not fire a keyword (0 = off).", minimum=0.0, maximum=1.0)
    cepstral_shift: float = option(0.0, "Add to each MFCC coefficient but c0 one random offset per training utterance, up to this many of the training set's standard deviations of it: a random microphone or voice timbre (0 = off).", minimum=0.0, maximum=10.0)
    time_masks: int = option(2, "SpecAugment: time masks per MFCC sequence.", minimum=0, maximum=100)
    time_mask_width: int = option(10, "SpecAugment: maximum width of a time mask (frames).", minimum=0, maximum=10_000)
    freq_masks: int = option(2, "SpecAugment: frequency masks per MFCC sequence.", minimum=0, maximum=100)
    freq_mask_width: int = option(3, "SpecAugment: maximum width of a frequency mask (coefficients).", minimum=0, maximum=512)
    modality_dropout: float = option(0.0, "Audio-visual runs: share of training clips that lose one modality (video or audio, evenly), so the model also classifies from either alone: a video without a sound track, `evaluate --drop` (0 = off).", minimum=0.0, maximum=1.0)
    modality_loss: float = option(0.0, "Audio-visual runs: weight of the extra losses that train the model on each modality alone on every clip (the fused classifier with the other modality removed, as `evaluate --drop` feeds it; pipeline/models/modality_losses.py). 0 = off.", minimum=0.0, maximum=10.0)
    unimodal_first: bool = option(False, "Audio-visual av_fusion runs with model.fusion backoff: train a video-only and an audio-only model first (RUN/stages/video_rnn and RUN/stages/audio_rnn, ordinary run dirs on RUN's features), then freeze them inside the fusion model and train only its fused classifier: a clip without sound is classified exactly as the video-only model classifies it, a clip without frames as the audio-only one. modality_dropout and modality_loss must be 0 with it.")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy loss.", minimum=0.0, below=1.0)
    shuffle_buffer: int = option(4096, "Examples shuffled together: each epoch is permuted in windows of this many (all of it when smaller).", minimum=1, maximum=10_000_000)
    cache: bool = option(True, "Cache decoded examples in memory after the first epoch (when the dataset fits).")
    source: str = option("features", "What training reads: the cached `features`, or `raw_audio`: the WAVs themselves, decoded and resampled in tf.data by tensorflow-io, for an audio_rnn that computes its MFCCs in-model (speech runs with preprocess.encoder none).", ["features", "raw_audio"])
    strategy: str = option("default", "tf.distribute strategy: `default` (one device), `mirrored`, `multi_worker` (TF_CONFIG).", ["default", "mirrored", "multi_worker"])


@dataclass(frozen=True)
class ExportConfig:
    formats: List[str] = option(list(EXPORT_FORMATS), "Formats to write: saved_model, float, float16, dynamic (dynamic-range int8 weights), int8 (full integer).")
    representative_samples: int = option(32, "Training examples used to calibrate int8 quantisation.", minimum=1, maximum=100_000)
    latency_runs: int = option(20, "Timed runs per format for the latency columns of parity.json.", minimum=1, maximum=10_000)
    stream_fps: float = option(0.0, "Streaming video runs: frames per second the streaming file is fed (a camera or a video file sampled at this rate). 0 = the rate the model's training frames had: preprocess.num_frames spread over each training clip (the median over up to 32 clips; 10 when no clip can be read).", minimum=0.0, maximum=240.0)


@dataclass(frozen=True)
class Config:
    seed: int = option(0, "Global seed: data generation, splits, shuffling, initialisation (as far as TensorFlow allows).", minimum=0, maximum=2**32 - 1)
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "Where the clips are and how they are split."})
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig, metadata={"doc": "Frame sampling, frame encoder and MFCC."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "Model builder and RNN head."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "Optimiser, schedule, regularisation."})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"doc": "Deployment formats."})


# ----------------------------------------------------------------------------- loading


MAX_CONFIG_BYTES = 1 << 20


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
    """Check choices, ranges and the relations between keys that the type system cannot express."""
    for key in _all_keys():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        meta = _field(key).metadata
        choices = meta.get("choices")
        if choices and value not in choices:
            raise UserError(f"{source}: key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{source}: key '{key}' must be a finite number{_range_hint(meta)}; got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value, meta):
            raise UserError(f"{source}: key '{key}' must be {_range_text(meta)}; got {value!r}")
    d, p = cfg.data, cfg.preprocess
    if d.val_fraction + d.test_fraction >= 1:
        raise UserError(f"{source}: keys 'data.val_fraction' + 'data.test_fraction' must add up to less than 1 "
                        f"(groups must be left to train); got {d.val_fraction:g} + {d.test_fraction:g}")
    if d.keywords:
        if d.kind != "speech":
            raise UserError(f"{source}: key 'data.keywords' needs data.kind: speech (got {d.kind})")
        if d.classes:
            raise UserError(f"{source}: keys 'data.keywords' and 'data.classes' cannot both be set: keywords make the classes "
                            f"(the words + _silence_ + _unknown_)")
        reserved = [w for w in d.keywords if w.startswith("_")]
        if reserved or len(set(d.keywords)) != len(d.keywords):
            raise UserError(f"{source}: key 'data.keywords' must list distinct word folders (not '_...' folders); got {d.keywords}")
        if d.unknown_fraction + d.silence_fraction >= 1:
            raise UserError(f"{source}: keys 'data.unknown_fraction' + 'data.silence_fraction' must add up to less than 1 "
                            f"(keywords need a share); got {d.unknown_fraction:g} + {d.silence_fraction:g}")
    snr = cfg.train.background_snr_db
    if len(snr) != 2 or not all(math.isfinite(v) for v in snr) or snr[0] > snr[1]:
        raise UserError(f"{source}: key 'train.background_snr_db' must be [low, high] in dB with low <= high; got {list(snr)}")
    bad = [m for m in p.modalities if m not in ("video", "audio")]
    if bad or not p.modalities:
        raise UserError(f"{source}: key 'preprocess.modalities' must list 'video' and/or 'audio'; got {p.modalities}")
    if d.kind == "speech" and "video" in p.modalities:
        raise UserError(f"{source}: key 'preprocess.modalities' cannot include 'video' when data.kind is 'speech'")
    bad = [f for f in cfg.export.formats if f not in EXPORT_FORMATS]
    if bad:
        raise UserError(f"{source}: key 'export.formats' has unknown format {bad[0]!r}; known: {', '.join(EXPORT_FORMATS)}")
    if cfg.train.source == "raw_audio" and (d.kind != "speech" or p.encoder != "none"):
        # WAVs only (video containers' audio is not read by tf.data), and encoder none makes preprocess,
        # evaluate and predict hand the model waveforms too.
        raise UserError(f"{source}: key 'train.source' raw_audio needs data.kind: speech and preprocess.encoder: none "
                        f"(got {d.kind} and {p.encoder})")
    t = cfg.train
    if t.unimodal_first and len(p.modalities) == 2 and cfg.model.name not in ("video_rnn", "audio_rnn"):
        if cfg.model.name != "av_fusion" or cfg.model.fusion != "backoff":
            raise UserError(f"{source}: key 'train.unimodal_first' needs model.name: av_fusion with model.fusion: backoff (a classifier "
                            f"per modality to freeze); got {cfg.model.name} with fusion {cfg.model.fusion}")
        if t.modality_dropout or t.modality_loss:
            raise UserError(f"{source}: key 'train.unimodal_first' trains each modality alone before fusing: set train.modality_dropout "
                            f"and train.modality_loss to 0 (got {t.modality_dropout:g} and {t.modality_loss:g})")
        if t.strategy == "multi_worker":
            raise UserError(f"{source}: key 'train.unimodal_first' trains its stages on one machine: train.strategy default or mirrored")
    if p.encoder == "motion" and "video" in p.modalities:  # its bands tile the rows; motion is between frames
        wrong = {"image_size": p.image_size % STRIPS and f"a multiple of {STRIPS}", "num_frames": p.num_frames < 2 and "at least 2",
                 "frame_difference": p.frame_difference and "false (it reads frame changes itself)"}
        for key, must in wrong.items():
            if must:
                raise UserError(f"{source}: key 'preprocess.{key}' must be {must} with encoder motion; got {getattr(p, key)}")
    nyquist = p.sample_rate / 2
    if p.fmax is not None and p.fmax > nyquist:
        raise UserError(f"{source}: key 'preprocess.fmax' must be at most sample_rate / 2 = {nyquist:g} Hz; got {p.fmax:g}")
    fmax = p.fmax if p.fmax is not None else nyquist
    if p.fmin >= fmax:
        raise UserError(f"{source}: key 'preprocess.fmin' must be below fmax ({fmax:g} Hz); got {p.fmin:g}")
    if p.n_mfcc > p.n_mels:
        raise UserError(f"{source}: key 'preprocess.n_mfcc' must be at most n_mels ({p.n_mels}); got {p.n_mfcc}")
    if p.mfcc_framing == "causal" and p.deltas:
        raise UserError(f"{source}: key 'preprocess.deltas' cannot be true with mfcc_framing causal (deltas need 4 future frames)")
    if p.mfcc_framing == "causal" and p.n_fft < p.hop_length:
        raise UserError(f"{source}: key 'preprocess.n_fft' ({p.n_fft}) must be at least hop_length ({p.hop_length}) with mfcc_framing causal")
    if p.n_fft > p.audio_seconds * p.sample_rate and "audio" in p.modalities:
        raise UserError(
            f"{source}: key 'preprocess.n_fft' ({p.n_fft}) is longer than the audio window "
            f"({p.audio_seconds} s x {p.sample_rate} Hz samples)"
        )


def _range_text(meta: Any) -> str:
    text = allowed_range(meta) or "a number"
    return f"in {text}" if text[0] in "[(" else text


def _range_hint(meta: Any) -> str:
    return f" {_range_text(meta)}" if allowed_range(meta) else ""


def _check_sections(data: dict, source: str, allow_empty: bool) -> dict:
    """Each section must be a mapping of keys (`train: 5` is an error); an empty section in a file is no change."""
    data = dict(data)
    for name in _SECTIONS:
        if name not in data or isinstance(data[name], dict):
            continue
        if data[name] is None and allow_empty:
            del data[name]
            continue
        raise UserError(f"{source}: {name}: expected a mapping of keys (e.g. {name}.{dataclasses.fields(_SECTIONS[name])[0].name}), "
                        f"got {data[name]!r}")
    return data


def parse_overrides(overrides: Sequence[str]) -> dict:
    """['train.epochs=3', 'model.cell=lstm'] -> nested dict; values parsed as YAML scalars/lists."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            value = safe_load_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
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


def shipped_config_dir() -> Path:
    """Where the shipped configs are: pipeline/configs/ in an installed package (package data copied from the
    checkout's top-level configs/ by setup.cfg), or configs/ beside pipeline/ in a source checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    if installed.is_dir():
        return installed
    return package.parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the shipped configs, sorted: ['actions_av', 'commands', ...] (what `--config NAME` accepts)."""
    folder = shipped_config_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _is_name(text: str) -> bool:
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    return text not in ("", ".", "..") and not any(sep in text for sep in separators) and not text.lower().endswith((".yaml", ".yml"))


def config_path(config: str | Path) -> Path:
    """The file a `--config` value means: a shipped config's name (no path separator, no .yaml: `commands`,
    `actions_av`) or a path to a YAML file. An unknown name is a one-line UserError listing the shipped ones;
    a path is returned as given (load_config reports a missing file)."""
    text = str(config)
    if _is_name(text):
        shipped = shipped_config_dir() / f"{text}.yaml"
        if shipped.is_file():
            return shipped
        if not Path(text).exists():
            names = ", ".join(shipped_configs()) or "(none found)"
            raise UserError(f"unknown config '{text}'; shipped: {names} (or give a path to a YAML file)")
    return Path(config)


def _read_config_text(path: Path) -> str:
    """The text of a config file, or a one-line UserError for anything that is not a small UTF-8 text file."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a config file (give a YAML file or a shipped config's name)")
    if not path.exists():
        hint = f" (the shipped one is --config {path.stem})" if path.suffix in (".yaml", ".yml") and path.stem in shipped_configs() else ""
        raise UserError(f"{path}: config file not found{hint}")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file (a config is a YAML file)")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{path}: {size} bytes is too large for a config (at most {MAX_CONFIG_BYTES}); is it the right file?")
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror or e})") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise UserError(f"{path}: the config is UTF-16/32 text; save it as UTF-8")
    if b"\x00" in raw:
        raise UserError(f"{path}: is a binary file, not a YAML config")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: is not UTF-8 text (line {line}, byte {e.start}); save the config as UTF-8") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults), apply `key=value` overrides, type-check and validate.

    path: a YAML file, or a shipped config's name (`commands`, see shipped_configs()), or None for the defaults.
    Raises UserError with one line naming the file/key at fault.
    """
    merged = OmegaConf.structured(Config)
    source = "defaults"
    if path is not None:
        path = config_path(path)
        text = _read_config_text(path)
        try:
            data = safe_load_yaml(text, str(path))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{path}:{where} is not valid YAML ({_one_line(getattr(e, 'problem', None) or e)})") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of sections (data, preprocess, model, train, export), got {type(data).__name__}")
        merged = _merge(merged, _check_sections(data, str(path), allow_empty=True), str(path))
        source = str(path)
    if overrides:
        merged = _merge(merged, _check_sections(parse_overrides(overrides), "--set", allow_empty=False), "--set")
        source = f"{source} + --set"
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"{source}: {str(e).splitlines()[0]}") from None
    _validate(cfg, source)
    return cfg


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


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


# ----------------------------------------------------------------------------- feature-cache key

FEATURE_SECTIONS = ("data", "preprocess")


def feature_keys() -> list[str]:
    """Dotted names of the settings that decide the cached features: `seed` (splits, sampled frames) and every
    data/preprocess key except those declared `affects_features=False` (data.root, preprocess.workers,
    preprocess.encoder_batch: where the clips are and how fast they are processed)."""
    return [key for key in _all_keys()
            if key == "seed" or (key.partition(".")[0] in FEATURE_SECTIONS and _field(key).metadata.get("affects_features", True))]


def feature_settings(cfg: Config) -> dict:
    """{dotted key: value} over feature_keys(): what features_hash hashes (e.g. to show what changed)."""
    settings = {}
    for key in feature_keys():
        section, _, name = key.rpartition(".")
        settings[key] = getattr(getattr(cfg, section) if section else cfg, name)
    return settings


def features_hash(cfg: Config) -> str:
    """The feature-cache key: 16 hex digits of a sha256 over feature_settings(cfg).

    Equal for two configs exactly when their cached features would be equal as far as the config decides
    (the contents of a preprocess.weights file are not read: hash the file beside it). Execution settings and
    the dataset's location leave it unchanged, so a changed preprocess.workers or a moved data.root reuses the
    cache. Stable across processes and Python versions (sorted JSON of plain values).
    """
    blob = json.dumps(feature_settings(cfg), sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- reference doc


def markdown_reference() -> str:
    """The config reference (configs/README.md body): every key, its type, default, range and doc."""
    lines = [
        "# Config reference",
        "",
        "Generated from `pipeline/config.py` by `actrec config docs > configs/README.md`;",
        "a test fails when the two drift apart. Every key has a default; a YAML file only lists what it changes,",
        "and `--set section.key=value` overrides any key from the command line. Unknown keys are errors, and so are",
        "values outside a key's range (`[a, b)`: a included, b excluded) and non-finite numbers (`inf`, `nan`).",
        "",
        "`--config` takes a path to a YAML file or the name of a shipped config (the files beside this one, installed",
        f"with the package): {', '.join(f'`{n}`' for n in shipped_configs())}.",
        "",
        "Cached features are reused while the keys that decide them are unchanged (the feature-cache key: `seed` and",
        "the `data` and `preprocess` keys). Keys marked *not in the feature-cache key* only say where the clips are or",
        "how fast they are processed: changing them keeps a run's cached features.",
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
    if allowed_range(f.metadata):
        doc += f" Range: `{allowed_range(f.metadata)}`."
    if not f.metadata.get("affects_features", True):
        doc += " *Not in the feature-cache key.*"
    return f"| `{key}` | {kind} | `{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}` | {doc} |"
