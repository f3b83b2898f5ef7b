"""Model builders (no file I/O here): RNN heads, fusion, the hybrid CNN-RNN, and the registry."""

import keras

# Importing these registers every custom layer a saved model may hold (package "actrec").
import pipeline.features.encoders  # noqa: F401
import pipeline.features.mfcc_layers  # noqa: F401
import pipeline.models.heads  # noqa: F401
import pipeline.models.hybrid  # noqa: F401
from pipeline.models.fusion import MODEL_REGISTRY, ModelSpec, build_model


def load_model(path) -> keras.Model:
    """Load a .keras model saved by `actrec train` (safe mode: no arbitrary code from the file)."""
    return keras.saving.load_model(str(path), safe_mode=True)


__all__ = ["MODEL_REGISTRY", "ModelSpec", "build_model", "load_model"]
