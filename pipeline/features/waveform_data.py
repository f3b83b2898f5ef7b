"""Raw-waveform training input (train.source: raw_audio): WAV files -> tf.data batches for a waveform model.

    the run's manifest rows (datasets.resolve_rows, minus the clips preprocessing skipped)
        --tf.data--> path, label id
        --tfio_load_audio: tf.audio.decode_wav + tensorflow-io resample--> float32 [N'] at preprocess.sample_rate
        --fit_length (the numpy function preprocessing uses, through tf.numpy_function)--> float32 [M], valid samples
        --> batches of ({'waveform': float32 [B, M], 'num_samples': int32 [B]}, one-hot label float32 [B, K])

M = round(audio_seconds x sample_rate). The model computes its MFCCs in-graph (the MFCC layer), so
this path needs no cached MFCCs; preprocessing still fixes the classes, splits and skipped clips,
and the model's dataset-normalisation statistics.

Against the preprocessing path (soundfile + soxr + fit_length): 16-bit WAVs at the run's rate give
identical samples (both are int16 / 32768, no resampling); at other rates tensorflow-io's resampler
differs from soxr by ~30 dB SNR (see tests/test_waveform_data.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.features.epochs import ORDER, epoch_seed, epochs, shuffled

WAVEFORM_INPUTS = ("waveform", "num_samples")


def waveform_rows(cfg: Config, index: dict, split: str) -> list:
    """The split's manifest rows that preprocessing cached: [ManifestRow], in manifest order.

    Rows preprocessing skipped (unreadable, truncated, unknown label) are left out; if what is left
    differs from the cached counts, the dataset changed since preprocessing and that is an error.
    """
    from pipeline.datasets import resolve_rows

    rows, _, _ = resolve_rows(cfg)
    skipped = {path for path, _ in index["errors"]}
    classes = set(index["classes"])
    rows = [r for r in rows if r.split == split and r.label in classes and r.clip_id not in skipped]
    if any(r.start is not None for r in rows):
        raise UserError(f"{cfg.data.root}: train.source raw_audio reads whole WAV files, not the _silence_ windows cut from "
                        f"background recordings (data.keywords); use train.source: features")
    if len(rows) != index["counts"][split]:
        raise UserError(
            f"{cfg.data.root}: {len(rows)} {split} clips found now, {index['counts'][split]} when the features were made; "
            "re-run `actrec preprocess --overwrite` (or set data.manifest to the manifest preprocessing used)"
        )
    return rows


def check_wavs(root: str | Path, rows) -> None:
    """Raise UserError unless every row is a 16-bit PCM WAV (what tf.audio.decode_wav reads)."""
    import soundfile

    for row in rows:
        path = Path(root) / row.path
        try:
            subtype = soundfile.info(str(path)).subtype if path.suffix.lower() == ".wav" else None
        except RuntimeError:  # libsndfile cannot read it; preprocessing would have skipped it
            subtype = None
        if subtype != "PCM_16":
            raise UserError(f"{path}: train.source raw_audio reads 16-bit PCM WAV files only (got {subtype or path.suffix}); "
                            "use train.source: features")


def load_window(path, sample_rate: int, num_samples: int):
    """One file, as preprocessing's audio_arrays sees it, in-graph.

    Args:
        path: string tensor (scalar), a 16-bit PCM WAV.
        sample_rate: the run's rate (Hz).
        num_samples: M, the window length (audio_seconds x sample_rate).

    Returns:
        waveform float32 [M] (centre-cropped or zero-padded at the end) and num_samples int32 (valid samples).
    """
    import tensorflow as tf

    from pipeline.features.mfcc_layers import tfio_load_audio
    from pipeline.media.audio import fit_length

    def fit(waveform):  # the one definition of crop/pad, in numpy
        window, valid = fit_length(waveform, num_samples)
        return window, np.int32(valid)

    window, valid = tf.numpy_function(fit, [tfio_load_audio(path, sample_rate)], [tf.float32, tf.int32], stateful=False)
    window.set_shape([num_samples])
    valid.set_shape([])
    return window, valid


def waveform_dataset(cfg: Config, index: dict, split: str, input_names=WAVEFORM_INPUTS, training: bool = False,
                     batch_size: int | None = None, first_epoch: int | None = None):
    """Batches of ({'waveform': float32 [B, M], 'num_samples': int32 [B]}, one-hot labels float32 [B, K]) for one split.

    Training shuffles each epoch in an order of its own (features.epochs): epoch 0 alone, or with first_epoch every
    epoch from it on, endlessly. Evaluation keeps the order of `waveform_rows`.
    With train.cache the decoded windows are kept in memory after the first epoch.
    """
    import tensorflow as tf

    unknown = [name for name in input_names if name not in WAVEFORM_INPUTS]
    if unknown:
        raise UserError(f"train.source raw_audio feeds only {' and '.join(WAVEFORM_INPUTS)}; "
                        f"model.name={cfg.model.name} also needs '{unknown[0]}' (use model.name: audio_rnn)")
    rows = waveform_rows(cfg, index, split)
    if not rows:
        raise UserError(f"{cfg.data.root}: the {split} split has no clips")
    check_wavs(cfg.data.root, rows)
    p, t = cfg.preprocess, cfg.train
    num_samples = round(p.audio_seconds * p.sample_rate)
    label_ids = {c: i for i, c in enumerate(index["classes"])}
    paths = [str(Path(cfg.data.root) / r.path) for r in rows]
    labels = [label_ids[r.label] for r in rows]

    def load(path, label):
        waveform, valid = load_window(path, p.sample_rate, num_samples)
        return {name: value for name, value in (("waveform", waveform), ("num_samples", valid)) if name in input_names}, \
            tf.one_hot(label, len(label_ids))

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    batch = batch_size or t.batch_size
    if not training:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return (ds.cache() if t.cache else ds).batch(batch).prefetch(tf.data.AUTOTUNE)
    decoded = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache() if t.cache else None

    def one_epoch(epoch):
        seed = epoch_seed(cfg.seed, epoch, ORDER)
        # with the cache, shuffle decoded windows; without it, paths (small), then decode
        examples = shuffled(decoded, t.shuffle_buffer, seed) if decoded is not None else \
            shuffled(ds, t.shuffle_buffer, seed).map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return examples.batch(batch)

    return (one_epoch(0) if first_epoch is None else epochs(one_epoch, first_epoch)).prefetch(tf.data.AUTOTUNE)
