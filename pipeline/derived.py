"""Settings that follow from a config and cannot be set: `model.streamable`, and why a config is not.

    Config --streaming_blockers--> [reason, ...] (empty: streamable) --derived_settings--> {"model.streamable": bool}

`actrec config show` prints them under the resolved YAML; export writes streaming files when the run is streamable.
"""

from __future__ import annotations

from pipeline.config import Config


def streaming_blockers(cfg: Config) -> list[str]:
    """Why this config's model cannot run step by step, one line per reason (empty: `model.streamable`).

    Streaming (pipeline.models.streaming) needs every step causal: a unidirectional RNN pooled causally (last state,
    mean or max); for audio_rnn, MFCC frames that end at their hop, fixed or running normalisation statistics and a
    window of whole hops; for video_rnn, a frame encoder that reads one frame (and the one before it) at a time;
    av_fusion needs both.
    """
    m, p = cfg.model, cfg.preprocess
    reasons = []
    if m.name not in ("audio_rnn", "video_rnn", "av_fusion"):
        reasons.append(f"model.name is {m.name} (streaming is built for audio_rnn, video_rnn and av_fusion)")
    if m.bidirectional:
        reasons.append("model.bidirectional is true (the backward RNN needs the future)")
    if m.pooling not in ("last", "mean", "max"):
        reasons.append(f"model.pooling is {m.pooling} (needs `last`, the state now, or `mean` or `max` over the last window of states)")
    if m.name in ("video_rnn", "av_fusion") and p.encoder == "none":
        reasons.append(f"preprocess.encoder is none ({m.name} streams cached-feature runs: a frame encoder per frame)")
    if m.name == "video_rnn":
        return reasons
    if p.mfcc_framing != "causal":
        reasons.append("preprocess.mfcc_framing is centred (frames reach half an FFT into the future, and the dB floor follows the whole utterance)")
    if p.normalize == "utterance":
        reasons.append("preprocess.normalize is utterance (statistics of the whole utterance); use running, dataset or none")
    if p.deltas:
        reasons.append("preprocess.deltas is true (deltas need 4 future frames)")
    hop = m.audio_stack * p.hop_length
    window = round(p.audio_seconds * p.sample_rate)
    if window % hop:
        reasons.append(f"the audio window ({window} samples) is not a whole number of hops of {hop} samples (model.audio_stack x preprocess.hop_length)")
    return reasons


def derived_settings(cfg: Config) -> dict:
    """Settings that follow from the others and cannot be set: {dotted key: value}, for `actrec config show`."""
    return {"model.streamable": not streaming_blockers(cfg)}
