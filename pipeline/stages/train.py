"""Train stage: cached features in DIR/features -> DIR/model.keras, history.csv, curves, TensorBoard logs
(and, for the hybrid model, DIR/frame_encoder.weights.h5: its trained CNN, reusable as preprocess.weights;
with train.unimodal_first, DIR/stages/video_rnn and DIR/stages/audio_rnn: the single-modality runs trained first).

    features/*.tfrecord --parse--> {frame_features [T, D], frame_lengths, mfcc [F, C], mfcc_length, ...}
        --augment (train only: temporal jitter, SpecAugment)--> batches --model--> probabilities

The habits that make RNNs train are on by default: gradient clipping (clipnorm 1.0), dropout,
L2 on kernels, Keras' initialisers (Glorot kernels, orthogonal recurrent kernels, unit forget
bias), masking of padded steps, a cosine learning-rate decay, early stopping on validation loss
(or accuracy: train.select_on) that restores the best weights. Training checkpoints every epoch (BackupAndRestore): a killed
run resumes from its last finished epoch when the same command is run again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import Config, ModelConfig, features_hash, section_hash, to_yaml
from pipeline.datasets import check_splits
from pipeline.errors import UserError
from pipeline.features.augment import (
    cepstral_shift,
    change_speed,
    cut_word,
    drop_modality,
    mix_background,
    spatial_augment,
    spec_augment,
    split_seed,
    temporal_jitter,
    time_shift,
    uniform,
    warp_filterbank,
)
from pipeline.features.epochs import EXAMPLES, KINDS, ORDER, epoch_seed, epochs, shuffled, with_example_seeds
from pipeline.features.records import modalities_of
from pipeline.files import atomic_write_json, atomic_write_text, atomic_write_weights, temp_path
from pipeline.labels import SILENCE, UNKNOWN, reject_clips
from pipeline.progress import keras_verbosity
from pipeline.rundir import RunDir, read_json
from pipeline.runtime.keras_model import input_names, load_trained_model, model_spec

# Keras warns about finite tf.data datasets and their own shuffling; both are intended here.
warnings.filterwarnings("ignore", message=".*ran out of data.*")
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


# ----------------------------------------------------------------------------- tf.data input


MODEL_INPUTS = {  # cached feature -> the model input it feeds (the length features ride along)
    "frame_features": "frame_lengths",
    "frames": "frame_lengths",
    "mfcc": "mfcc_length",
    "waveform": "num_samples",
}


def make_dataset(run_dir: str | Path, index: dict, split: str, cfg: Config, input_names: Sequence[str],
                 training: bool = False, batch_size: int | None = None, view: int | None = 0, with_ids: bool = False,
                 first_epoch: int | None = None):
    """Batches of ({input name: tensor}, one-hot label) for one split.

    Training: epoch 0 alone, or with first_epoch every epoch from it on, endlessly (features.epochs: each epoch's
    order and augmentation follow from the config's seed and the epoch number). Views: training draws a random view
    per example (multi_clip windows act as augmentation); evaluation takes `view` (or all views stacked as extra
    batch rows when view is None).
    """
    import tensorflow as tf

    features_dir = RunDir(run_dir).features
    files = [str(features_dir / name) for name in index["shards"][split]]
    if not files:
        raise UserError(f"{run_dir}: the {split} split has no cached clips")
    schema = index["features"]
    num_classes = len(index["classes"])
    t = cfg.train
    # Speech runs with cached waveforms: augment the sound, then compute the MFCCs the model reads (augment_audio).
    sound = training and t.augment and "waveform" in schema and "mfcc" in input_names and "waveform" not in input_names
    read = [*input_names, "waveform"] if sound else list(input_names)
    spec = {"label": tf.io.FixedLenFeature([], tf.int64), "clip_id": tf.io.FixedLenFeature([], tf.string)}
    for name in read:
        if name not in schema:
            raise UserError(f"{run_dir}: the model needs cached '{name}', which features/index.json does not list; re-run `actrec preprocess` with a config that caches it")
        shape, dtype = schema[name]["shape"], schema[name]["dtype"]
        if dtype == "uint8":
            spec[name] = tf.io.FixedLenFeature([], tf.string)
        else:
            spec[name] = tf.io.FixedLenFeature(shape, tf.float32 if dtype == "float32" else tf.int64)
    augment_sound = audio_augmentation(run_dir, index, cfg) if sound else None
    shift_scale = cepstral_shift_scale(index, cfg) if training and t.augment and "mfcc" in input_names else None

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        out = {}
        for name in read:
            value = ex[name]
            if schema[name]["dtype"] == "uint8":
                value = tf.reshape(tf.io.decode_raw(value, tf.uint8), schema[name]["shape"])
            elif schema[name]["dtype"] == "int64":
                value = tf.cast(value, tf.int32)
            out[name] = value
        return out, tf.one_hot(ex["label"], num_classes), ex["clip_id"]

    def pick_view(x, y, clip_id, seed=None):
        views = tf.shape(x[next(iter(x))])[0] if any(n in x for n in ("frame_features", "frames")) else 1
        v = uniform(seed, 0, views, tf.int32) if training else (view or 0)
        x = {n: (tf.gather(value, v) if n in ("frame_features", "frames", "frame_lengths") else value) for n, value in x.items()}
        return x, y, clip_id

    def augment(x, seed):
        jitter, spatial, sound, masks = tf.unstack(split_seed(seed, 4))
        if "frame_features" in x or "frames" in x:
            key = "frame_features" if "frame_features" in x else "frames"
            x[key] = temporal_jitter(x[key], x["frame_lengths"], jitter)
        if "frames" in x:  # the end-to-end model sees pixels: unseen actors and backgrounds need spatial variety
            x["frames"] = spatial_augment(x["frames"], spatial)
        if augment_sound is not None:
            x["mfcc"] = augment_sound(x.pop("waveform"), sound)
        if shift_scale is not None:  # its seed is drawn from the masks' own, so the other draws stay what they were
            x["mfcc"] = cepstral_shift(x["mfcc"], shift_scale, split_seed(masks, 1)[0])
        if "mfcc" in x:
            x["mfcc"] = spec_augment(x["mfcc"], masks, t.time_masks, t.time_mask_width, t.freq_masks, t.freq_mask_width)
        return x

    drop = t.modality_dropout > 0 and len(modalities_of(input_names)) == 2
    classes = index["classes"]
    cut = sound and t.cut_words > 0 and UNKNOWN in classes

    def cut_short(x, y, seed):
        """With probability train.cut_words, a word (not a _silence_ window) cut short and relabelled _unknown_."""
        whether, where = tf.unstack(split_seed(seed, 2))
        is_word = tf.argmax(y) != classes.index(SILENCE) if SILENCE in classes else tf.constant(True)
        chosen = tf.logical_and(is_word, uniform(whether, 0.0, 1.0) < t.cut_words)
        x["waveform"] = tf.cond(chosen, lambda: cut_word(x["waveform"], where), lambda: x["waveform"])
        return x, tf.where(chosen, tf.one_hot(classes.index(UNKNOWN), num_classes), y)

    def training_example(x, y, clip_id, seed):
        """One example of an epoch, its random choices all drawn from its own seed."""
        view_seed, augment_seed, drop_seed = tf.unstack(split_seed(seed, 3))
        x, y, clip_id = pick_view(x, y, clip_id, view_seed)
        if cut:  # its seed is drawn from the view's, so the other draws stay what they were
            x, y = cut_short(x, y, split_seed(view_seed, 1)[0])
        if t.augment:
            x = augment(x, augment_seed)
        if drop:
            x = drop_modality(x, t.modality_dropout, drop_seed)
        return x, y, clip_id

    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if t.cache:
        ds = ds.cache()
    if training:
        examples, per_epoch = ds, sum(epoch_plan(index, cfg).values())

        def one_epoch(epoch):
            ordered = shuffled(examples, t.shuffle_buffer, epoch_seed(cfg.seed, epoch, ORDER))
            shares = with_epoch_shares(ordered, index, cfg, epoch_seed(cfg.seed, epoch, KINDS))
            # the cached counts must say how long an epoch is: fit reads that many batches per epoch from the stream
            shares = shares.apply(tf.data.experimental.assert_cardinality(per_epoch))
            seeded = with_example_seeds(shares, epoch_seed(cfg.seed, epoch, EXAMPLES))
            seeded = seeded.map(training_example, num_parallel_calls=tf.data.AUTOTUNE)
            if not with_ids:
                seeded = seeded.map(lambda x, y, clip_id: (x, y))
            return seeded.batch(batch_size or t.batch_size)

        ds = one_epoch(0) if first_epoch is None else epochs(one_epoch, first_epoch)
        return ds.prefetch(tf.data.AUTOTUNE)
    if view is not None:
        ds = ds.map(pick_view, num_parallel_calls=tf.data.AUTOTUNE)
    if not with_ids:
        ds = ds.map(lambda x, y, clip_id: (x, y))
    return ds.batch(batch_size or t.batch_size).prefetch(tf.data.AUTOTUNE)


def cepstral_shift_scale(index: dict, cfg: Config) -> list[float] | None:
    """train.cepstral_shift in MFCC units: the training set's standard deviation of each coefficient times it, 0 for
    c0 (loudness); None when off."""
    if cfg.train.cepstral_shift <= 0:
        return None
    stats = index.get("mfcc_stats") or {}
    if not stats.get("std"):
        raise UserError("train.cepstral_shift needs the training set's MFCC statistics in features/index.json; "
                        "re-run `actrec preprocess`")
    return [0.0] + [cfg.train.cepstral_shift * float(s) for s in stats["std"][1:]]


def audio_augmentation(run_dir, index: dict, cfg: Config):
    """waveform float32 [N] -> augmented (time shift, speed, background; frequency warp) -> MFCC float32 [F, C], the function that
    replaces a training example's cached MFCCs. The backgrounds are the training split's cached `_silence_` windows."""
    import tensorflow as tf

    from pipeline.features.mfcc import MFCCParams
    from pipeline.features.mfcc_layers import MFCC

    t, p = cfg.train, cfg.preprocess
    mfcc = MFCC.from_params(MFCCParams.from_config(p))
    backgrounds = training_backgrounds(run_dir, index) if t.background_mix > 0 else None
    max_shift = round(t.time_shift * p.sample_rate)
    mfcc_shape = index["features"]["mfcc"]["shape"]

    def augment_sound(waveform, seed):
        shift, speed, background = tf.unstack(split_seed(seed, 3))
        if max_shift:
            waveform = time_shift(waveform, max_shift, shift)
        if t.speed_change:
            waveform = change_speed(waveform, t.speed_change, speed)
        if backgrounds is not None:
            waveform = mix_background(waveform, backgrounds, t.background_mix, tuple(t.background_snr_db), background)
        filterbank = None
        if t.vtlp:  # the warp's seed is drawn from the speed's, so the other draws stay what they were
            filterbank = warp_filterbank(mfcc.filterbank, uniform(split_seed(speed, 1)[0], 1 - t.vtlp, 1 + t.vtlp))
        features = mfcc.waveform_to_mfcc(tf.clip_by_value(waveform, -1.0, 1.0)[None], filterbank)[0]
        return tf.ensure_shape(features, mfcc_shape)  # static F for the model

    return augment_sound


def training_backgrounds(run_dir, index: dict) -> np.ndarray | None:
    """The cached waveforms of the training split's `_silence_` windows: float32 [S, N], or None if there are none."""
    import tensorflow as tf

    if SILENCE not in index["classes"]:
        return None
    silence = index["classes"].index(SILENCE)
    n = index["features"]["waveform"]["shape"][0]
    spec = {"label": tf.io.FixedLenFeature([], tf.int64), "waveform": tf.io.FixedLenFeature([n], tf.float32)}
    files = [str(RunDir(run_dir).features / name) for name in index["shards"]["train"]]
    windows = [ex["waveform"] for ex in tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, spec))
               .filter(lambda ex: ex["label"] == silence).as_numpy_iterator()]
    return np.stack(windows) if windows else None


def epoch_plan(index: dict, cfg: Config) -> dict[str, int]:
    """Training examples per epoch by kind: {'keywords': n, '_unknown_': n, '_silence_': n} for an open-set run
    (each reject label a data.<label>_fraction share of the epoch), {'all': training clips} otherwise."""
    classes, per_class = index["classes"], index.get("train_per_class") or {}
    shares = {label: share for label, share in ((UNKNOWN, cfg.data.unknown_fraction), (SILENCE, cfg.data.silence_fraction))
              if label in classes}
    if not shares:
        return {"all": index["counts"]["train"]}
    keywords = sum(n for label, n in per_class.items() if label not in shares)
    return {"keywords": keywords, **reject_clips(keywords, shares)}


def with_epoch_shares(ds, index: dict, cfg: Config, seed):
    """An open-set run's training epoch: every keyword clip once, and _unknown_ / _silence_ clips drawn (in the
    epoch's order) from all that were cached, to make up their share of the epoch (epoch_plan).

    ds: (inputs, one-hot label [K], clip_id) examples of the training split, in the epoch's order; seed: the
    epoch's KINDS seed (int64 [2]), which orders the kinds. Other runs: ds unchanged.
    """
    import tensorflow as tf

    plan = epoch_plan(index, cfg)
    if "all" in plan:
        return ds
    reject = [index["classes"].index(label) for label in plan if label != "keywords"]

    def label_is(ids):
        return lambda x, y, clip_id: tf.reduce_any(tf.equal(tf.argmax(y, output_type=tf.int32), ids))

    streams = [ds.filter(lambda x, y, clip_id: tf.logical_not(label_is(reject)(x, y, clip_id)))]
    streams += [ds.filter(label_is([i])).repeat() for i in reject]
    kinds = np.repeat(np.arange(len(plan), dtype=np.int64), list(plan.values()))
    choice = shuffled(tf.data.Dataset.from_tensor_slices(kinds), len(kinds), seed)
    return tf.data.Dataset.choose_from_datasets(streams, choice)


# ----------------------------------------------------------------------------- training


def class_weights(run_dir, index: dict, cfg: Config) -> dict[int, float] | None:
    """Inverse-frequency weights over the training split (mean weight 1)."""
    if not cfg.train.class_weights:
        return None
    import tensorflow as tf

    counts = np.zeros(len(index["classes"]))
    spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    for name in index["shards"]["train"]:
        for record in tf.data.TFRecordDataset(str(RunDir(run_dir).features / name)):
            counts[int(tf.io.parse_single_example(record, spec)["label"])] += 1
    weights = counts.sum() / np.maximum(counts, 1) / len(counts)
    return {i: float(w) for i, w in enumerate(weights)}


def make_optimizer(cfg: Config, steps_per_epoch: int):
    import keras

    t = cfg.train
    lr = t.learning_rate
    if t.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=max(1, t.epochs * steps_per_epoch), alpha=0.05)
    clip = {"clipnorm": t.clipnorm} if t.clipnorm > 0 else {}
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay, **clip)
    return keras.optimizers.Adam(lr, **clip)


def train_hash(cfg: Config) -> str:
    """What decides the trained model: the model and train sections and the features. model.fusion does not count
    for a model of one modality (it has nothing to fuse), so a run of one is reused across fusion settings."""
    model = dataclasses.replace(cfg.model, fusion=ModelConfig().fusion) if cfg.model.name in ("video_rnn", "audio_rnn") else cfg.model
    return section_hash(model, cfg.train) + "-" + features_hash(cfg)


UNIMODAL_STAGES = {"video": "video_rnn", "audio": "audio_rnn"}  # train.unimodal_first: modality -> the model trained first


def train_unimodal_stages(cfg: Config, run: RunDir, overwrite: bool, progress: bool) -> dict[str, RunDir]:
    """train.unimodal_first: RUN/stages/video_rnn and RUN/stages/audio_rnn, ordinary run dirs on RUN's features (a
    relative link), each trained as a run of this config with that model would be; returns {modality: its run dir}.
    Each is resumable and reused as any run is (a finished one with the same config is not retrained)."""
    if not isinstance(run.path, Path):
        raise UserError(f"{run}: train.unimodal_first needs a local run dir (its stages link to the run's features)")
    stages = {}
    for modality, name in UNIMODAL_STAGES.items():
        stage = RunDir(run.path / "stages" / name)
        stage.path.mkdir(parents=True, exist_ok=True)
        if not stage.features.exists():  # (a link that no longer resolves is made again)
            stage.features.unlink(missing_ok=True)
            os.symlink(os.path.join("..", "..", "features"), stage.features)
        stage_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name),
                                        train=dataclasses.replace(cfg.train, unimodal_first=False))
        print(f"train: stage {name} ({modality} alone) -> {stage}")
        train(stage_cfg, stage, overwrite=overwrite, progress=progress)
        stages[modality] = stage
    return stages


# ----------------------------------------------------------------------------- tf.distribute


def make_strategy(cfg: Config):
    """The tf.distribute strategy of train.strategy: `default` (one device), `mirrored` (every local
    GPU, or the CPU), `multi_worker` (MultiWorkerMirroredStrategy over the cluster in TF_CONFIG).

    Create it before any other TensorFlow op: the multi-worker strategy configures the runtime's collectives.
    """
    import tensorflow as tf

    if cfg.train.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if cfg.train.strategy == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def check_tf_config(text: str | None) -> None:
    """One-line UserErrors for a missing or malformed TF_CONFIG (TensorFlow's own errors are long or hang)."""
    example = 'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
    if not text:
        raise UserError(f"train.strategy=multi_worker needs the TF_CONFIG environment variable on every worker, {example}")
    try:
        tf_config = json.loads(text)
        workers = tf_config["cluster"][tf_config["task"]["type"]]
        index = int(tf_config["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"TF_CONFIG: expected JSON with cluster and task (type, index), {example}") from None
    if not 0 <= index < len(workers):
        raise UserError(f"TF_CONFIG: task index {index} but the cluster lists {len(workers)} {tf_config['task']['type']}(s)")


def cluster_task(strategy) -> tuple[str | None, int | None, int]:
    """(task type, task index, number of worker processes) of this process; (None, None, 1) off a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return None, None, 1
    return resolver.task_type, resolver.task_id, len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def worker_output_dir(run_dir: Path, strategy) -> Path:
    """Where this worker writes: the run dir on the chief; on the other workers a private folder
    (every worker runs the same training and holds the same weights, but only the chief's files count).
    The chief is task `chief`, or worker 0 when the cluster has no chief (TensorFlow's convention)."""
    task_type, task_id, _ = cluster_task(strategy)
    if task_type is None:
        return run_dir
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief):
        return run_dir
    return run_dir / "train_workers" / f"{task_type}-{task_id}"


def shard_for_workers(dataset, strategy, num_files: int):
    """Tell tf.distribute how to split a (globally batched) dataset between workers.

    With at least 4 TFRecord shards per worker each worker reads only its own shards (FILE, via AUTO;
    the uneven last shards then matter little). With fewer, every worker reads all of them and keeps
    its part of each global batch (DATA): the same batches and steps per epoch as one worker. Keras then
    splits each worker's part between its replicas; train.batch_size stays the global batch size.
    """
    import tensorflow as tf

    workers = cluster_task(strategy)[2]
    if workers <= 1:
        return dataset
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.AUTO if num_files >= 4 * workers else policy.DATA
    return dataset.with_options(options)


def prepare_multi_worker_fit(model, dataset, strategy) -> None:
    """Work around the two places where Keras 3.15's fit() fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585, tensorflow/tensorflow#72388); the two-worker test catches a Keras change.

    1. fit() builds the metric and optimizer state from the first distributed batch averaged with
       strategy.reduce, which fails on dict inputs ("Attempt to convert a value ({'mfcc': PerReplica...})").
       The shapes are all the build needs: build from the dataset's element_spec and skip Keras' attempt.
    2. The per-step logs (scalar loss and metrics) are averaged with strategy.reduce(..., axis=0), which
       fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions"). Those values are
       already global (metric variables are summed over every replica of every worker), so Keras' local
       path (mean over this worker's replicas) gives the same numbers: make Keras take it.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    with strategy.scope():
        model._symbolic_build(data_batch=dataset.element_spec)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    keras_tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False


def train(
    config: Config | str | Path | None = None,
    run_dir: str | Path = "runs/default",
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train the configured model on DIR/features; returns {'val_accuracy', 'val_loss', 'epochs', ...}.

    Re-running after a kill resumes from the last finished epoch; re-running a finished run does
    nothing unless the model/train config changed (then --overwrite is needed).
    """
    import keras

    from pipeline.callbacks import AtomicBackupAndRestore, BestWeights, StopOnNaN
    from pipeline.models import build_model
    from pipeline.models.fusion import adopt_unimodal
    from pipeline.models.modality_losses import ModalityLossTrainer, can_train_alone

    run = RunDir(run_dir)
    run_dir = run.path
    cfg = run.config(config, overrides)
    index = run.read_index()
    for warning in check_splits(index["counts"], index["classes"], f"{run} (cached features)", index.get("train_per_class"),
                                cfg.train.batch_size, val_needed=cfg.data.val_fraction > 0):
        print(f"train: warning: {warning}")
    if run.train_done.is_file():
        done = read_json(run.train_done)
        if done.get("train_hash") == train_hash(cfg) and run.model.is_file():
            print(f"{run}: already trained with this config (val accuracy {done['val_accuracy']:.3f}); nothing to do")
            return done
        if not overwrite:
            raise UserError(f"{run}: holds a model trained with a different model/train config; use --overwrite or another --run-dir")
        run.train_done.unlink()
        shutil.rmtree(run.train_state, ignore_errors=True)
        run.history.unlink(missing_ok=True)

    strategy = make_strategy(cfg)  # first: the multi-worker strategy must configure TensorFlow before any op
    out = RunDir(worker_output_dir(run_dir, strategy))  # the run dir itself, but for non-chief workers
    with out.lock("train"):
        atomic_write_text(out.config_file, to_yaml(cfg))
        unimodal = train_unimodal_stages(cfg, run, overwrite, progress) if cfg.train.unimodal_first and cfg.model.name == "av_fusion" else {}
        keras.utils.set_random_seed(cfg.seed)

        # batches per epoch: fit reads that many from the endless stream. The raw-audio stream reads every cached
        # training file once an epoch (waveform_rows checks there are that many); features, the epoch plan's shares.
        per_epoch = index["counts"]["train"] if cfg.train.source == "raw_audio" else sum(epoch_plan(index, cfg).values())
        steps = max(1, math.ceil(per_epoch / cfg.train.batch_size))
        with strategy.scope():  # model, optimizer and metric variables are mirrored on every replica and worker
            model = build_model(model_spec(cfg, index), cfg.model)
            for modality, stage in unimodal.items():  # frozen: only the fused classifier is left to train
                adopt_unimodal(model, modality, load_trained_model(stage.model))
            trainer = model  # what fit() trains: the model, or a trainer sharing its layers with more losses
            if cfg.train.modality_loss > 0 and can_train_alone(model):
                trainer = ModalityLossTrainer(model, cfg.train.modality_loss)
            compiled = {"optimizer": make_optimizer(cfg, steps), "metrics": ["accuracy"],
                        "loss": keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)}
            model.compile(**compiled)  # the model itself is evaluated and saved
            if trainer is not model:
                trainer.compile(**compiled)
        names = input_names(model)
        val_split = "val" if index["counts"]["val"] else "test"
        if val_split == "test":  # data.val_fraction 0, asked for: say what it costs
            print("train: warning: no validation split (data.val_fraction=0): early stopping and the best epoch are chosen on the "
                  "TEST split, so test accuracy will be optimistic (`actrec evaluate` says so in its report)")
        state_dir = out.train_state
        first_epoch = AtomicBackupAndRestore.epoch_to_resume(state_dir / "backup")  # 0, or where a killed run stopped
        if cfg.train.source == "raw_audio":  # the WAVs, decoded and resampled in tf.data
            from pipeline.features.waveform_data import waveform_dataset

            train_ds = waveform_dataset(cfg, index, "train", names, training=True, first_epoch=first_epoch)
            val_ds = waveform_dataset(cfg, index, val_split, names)
        else:
            train_ds = make_dataset(run_dir, index, "train", cfg, names, training=True, first_epoch=first_epoch)
            val_ds = make_dataset(run_dir, index, val_split, cfg, names)
        # one stream of every epoch: each worker keeps its part of each global batch (DATA), the same steps as one worker
        train_ds = shard_for_workers(train_ds, strategy, num_files=0)
        val_ds = shard_for_workers(val_ds, strategy, len(index["shards"][val_split]))
        prepare_multi_worker_fit(trainer, train_ds, strategy)

        nan_guard = StopOnNaN()
        callbacks = [
            AtomicBackupAndRestore(str(state_dir / "backup")),
            nan_guard,
            keras.callbacks.CSVLogger(str(out.history), append=True),
            keras.callbacks.TensorBoard(str(out.tensorboard), write_graph=False),
            BestWeights(state_dir, cfg.train.early_stopping, cfg.train.select_on),
        ]
        if cfg.train.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=max(2, cfg.train.early_stopping // 3)))
        weights = class_weights(run_dir, index, cfg)
        trainer.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs, steps_per_epoch=steps, callbacks=callbacks,
                  class_weight=weights, verbose=keras_verbosity(progress))
        if nan_guard.nan_epoch is not None:
            raise UserError(
                f"training loss became NaN in epoch {nan_guard.nan_epoch + 1}: lower train.learning_rate or set "
                f"train.clipnorm (now {cfg.train.clipnorm}); the last good weights are in {state_dir / 'best.weights.h5'}"
            )
        best = callbacks[-1]
        best.restore(model)

        tmp = temp_path(out.model).with_suffix(".keras")
        model.save(tmp)
        tmp.replace(out.model)
        if cfg.model.name == "hybrid":  # its trained CNN can encode frames for feature-level runs (preprocess.weights)
            atomic_write_weights(out.frame_encoder_weights, model.get_layer("frame_encoder").layer)
        history = read_history(out.history)
        plot_history(history, out.curves)
        val = model.evaluate(val_ds, verbose=0, return_dict=True)  # every worker: evaluation is a collective op too
        result = {
            "train_hash": train_hash(cfg),
            "val_split": val_split,
            "val_accuracy": float(val["accuracy"]),
            "val_loss": float(val["loss"]),
            "epochs": len(history.get("epoch", [])),
            "best_epoch": best.best_epoch + 1,
            "params": int(model.count_params()),
        }
        if unimodal:  # what each modality alone scored: the fusion model with the other absent answers the same
            summaries = {stage.name: read_json(stage.train_done) for stage in unimodal.values()}
            result["stages"] = {name: {k: done[k] for k in ("val_accuracy", "epochs", "best_epoch")} for name, done in summaries.items()}
        atomic_write_json(out.train_done, result)
        shutil.rmtree(state_dir, ignore_errors=True)
        if out.path != run.path:  # a non-chief worker: its copy of the model is the chief's
            shutil.rmtree(out.path, ignore_errors=True)
            try:
                out.path.parent.rmdir()  # train_workers/, once the last worker is done
            except OSError:
                pass
            print(f"train ({out.name}): {result['epochs']} epochs done; the chief worker writes {run.model}")
            return result
        print(f"train: {result['epochs']} epochs, best epoch {result['best_epoch']}, {val_split} accuracy {result['val_accuracy']:.3f} -> {run.model}")
        return result


def evaluate_split(run_dir: str | Path, split: str = "test") -> dict:
    """Accuracy of DIR/model.keras on one cached split: {'accuracy', 'loss', 'clips'}."""
    run = RunDir(run_dir)
    model = load_trained_model(run.require_model())
    cfg = run.config()
    index = run.read_index()
    ds = make_dataset(run.path, index, split, cfg, input_names(model))
    scores = model.evaluate(ds, verbose=0, return_dict=True)
    return {"accuracy": float(scores["accuracy"]), "loss": float(scores["loss"]), "clips": index["counts"][split]}


def read_history(path: Path) -> dict[str, list[float]]:
    import csv

    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_epoch = {int(r["epoch"]): r for r in rows}  # a resumed run may have logged an epoch twice
    history: dict[str, list[float]] = {}
    for epoch in sorted(by_epoch):
        for key, value in by_epoch[epoch].items():
            history.setdefault(key, []).append(float(value))
    return history


def plot_history(history: dict, path: Path) -> None:
    """Loss and accuracy per epoch, train vs validation (PNG). Drawn on its own Agg canvas: the global
    matplotlib backend stays as it is (a notebook keeps showing its plots after train())."""
    from pipeline.report import new_figure, save_figure

    if not history:
        return
    fig = new_figure(10, 3.5)
    axes = fig.subplots(1, 2)
    epochs = [e + 1 for e in history["epoch"]]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history.get(metric, []), label="train")
        ax.plot(epochs, history.get(f"val_{metric}", []), label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)
