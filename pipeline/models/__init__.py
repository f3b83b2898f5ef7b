"""Model builders (no file I/O here): RNN heads, audio branches, fusion, the hybrid CNN-RNN, and the registry.

    spec.py     ModelSpec: input shapes and class count, what a builder needs besides the config
    heads.py    rnn_head: masked (bi)LSTM/GRU stacks and their pooling
    audio.py    MFCC / raw-waveform branches
    fusion.py   video_rnn, audio_rnn, av_fusion on cached features
    hybrid.py   hybrid_cnn_rnn on raw frames
    registry.py build_model by name, load_model
"""

from pipeline.models.registry import MODEL_REGISTRY, build_model, load_model
from pipeline.models.spec import ModelSpec

__all__ = ["MODEL_REGISTRY", "ModelSpec", "build_model", "load_model"]
