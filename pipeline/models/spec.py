"""What a model builder is given besides the config: input shapes and the class count (no file I/O in models/).

Inputs are named as the cached features are (see pipeline.features.records.feature_schema):
    frame_features float32 [B, T, D] + frame_lengths int [B]    (video, frame-level features)
    frames         uint8   [B, T, S, S, 3] + frame_lengths      (video, raw frames: the hybrid model)
    mfcc           float32 [B, F, C] + mfcc_length   int [B]    (audio, cached MFCCs)
    waveform       float32 [B, N] + num_samples      int [B]    (audio, raw samples: MFCCs computed in-model)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """What a builder needs besides the config: input shapes and the class count (no file I/O in models/)."""

    num_classes: int
    frame_features: tuple[int, int] | None = None  # (T, D)
    frames: tuple[int, int, int] | None = None  # (T, S, S) uint8 frames, for the hybrid model
    mfcc: tuple[int, int] | None = None  # (F, C)
    waveform: int | None = None  # N samples, for the hybrid model
    mfcc_stats: dict | None = None  # {'mean': [C], 'std': [C]} for dataset normalisation
    frame_stats: dict | None = None  # {'mean': [D], 'std': [D]}: frame features normalised with the training set's statistics
    preprocess: object = None  # PreprocessConfig (MFCC parameters, encoder) for the hybrid model
    seed: int = 0
    extra: dict = field(default_factory=dict)


def require_feature(spec: ModelSpec, feature: str, model: str) -> None:
    """A one-line error when the run dir lacks the cached feature `model` needs."""
    if getattr(spec, feature) is None:
        hint = {
            "frame_features": "preprocess.modalities must include video with an encoder other than none",
            "mfcc": "preprocess.modalities must include audio",
            "frames": "preprocess.encoder must be none (cache raw frames)",
        }[feature]
        raise UserError(f"model.name={model} needs cached '{feature}' features, which the run dir does not have: {hint}, then run `actrec preprocess`")
