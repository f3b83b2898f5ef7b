"""Model builders (no file I/O here): RNN heads, fusion, the hybrid CNN-RNN, and the registry."""

from pipeline.models.fusion import MODEL_REGISTRY, ModelSpec, build_model

__all__ = ["MODEL_REGISTRY", "ModelSpec", "build_model"]
