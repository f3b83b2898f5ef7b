"""The registry that names every model builder, and loading a saved model.

    build_model(spec, cfg.model) -> keras.Model   (cfg.name: video_rnn | audio_rnn | av_fusion | hybrid)
    load_model(path)             -> keras.Model   (safe mode: no arbitrary code from the file)
"""

from __future__ import annotations

from typing import Callable

import keras

# Importing these registers every custom layer a saved model may hold (package "actrec").
import pipeline.features.encoders  # noqa: F401
import pipeline.features.mfcc_layers  # noqa: F401
from pipeline.errors import UserError
from pipeline.models.fusion import audio_rnn, av_fusion, video_rnn
from pipeline.models.hybrid import hybrid_cnn_rnn
from pipeline.models.spec import ModelSpec

MODEL_REGISTRY: dict[str, Callable[..., keras.Model]] = {
    "video_rnn": video_rnn,
    "audio_rnn": audio_rnn,
    "av_fusion": av_fusion,
    "hybrid": hybrid_cnn_rnn,
}


def build_model(spec: ModelSpec, cfg) -> keras.Model:
    """The model named by cfg.name (ModelConfig); unknown names are one-line errors."""
    if cfg.name not in MODEL_REGISTRY:
        raise UserError(f"model.name: unknown model {cfg.name!r}; known: {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[cfg.name](spec, cfg)


def load_model(path) -> keras.Model:
    """Load a .keras model saved by `actrec train` (safe mode: no arbitrary code from the file)."""
    return keras.saving.load_model(str(path), safe_mode=True)
