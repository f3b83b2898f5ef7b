"""Training callbacks that keep their state on disk, so a killed run resumes correctly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np

from pipeline.files import atomic_write_json, atomic_write_weights, temp_path


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first NaN/inf loss and remember the epoch (the best weights saved so far stay)."""

    def __init__(self):
        super().__init__()
        self.nan_epoch = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = self.epoch
            self.model.stop_training = True


class BestWeights(keras.callbacks.Callback):
    """Early stopping that survives a restart: best weights and counters live on disk.

    select_on `loss`: the epoch of the lowest validation loss; `accuracy`: of the highest validation accuracy, ties
    going to the lower loss. (keras.callbacks.EarlyStopping keeps its state in memory only, so a resumed run would
    forget it.)
    """

    def __init__(self, state_dir: Path, patience: int, select_on: str = "loss"):
        super().__init__()
        self.state_dir = Path(state_dir)
        self.patience = patience
        self.select_on = select_on
        self.state_file = self.state_dir / "best.json"
        self.weights_file = self.state_dir / "best.weights.h5"
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        best = state.get("best", [math.inf, math.inf])
        self.best = best if isinstance(best, list) else [best, math.inf]  # a float: a state file of before select_on
        self.best_epoch = state.get("best_epoch", -1)
        self.wait = state.get("wait", 0)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("val_loss", math.inf)
        key = [float(loss), 0.0] if self.select_on == "loss" else [-float(logs.get("val_accuracy", 0.0)), float(loss)]
        if math.isfinite(loss) and key < self.best:
            self.best, self.best_epoch, self.wait = key, epoch, 0
            self.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_weights(self.weights_file, self.model)
        else:
            self.wait += 1
        atomic_write_json(self.state_file, {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait})
        if self.patience and self.wait >= self.patience:
            self.model.stop_training = True

    def restore(self, model) -> None:
        if self.weights_file.is_file():
            model.load_weights(self.weights_file)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose checkpoint files are replaced atomically.

    Keras writes latest.weights.h5 in place: a SIGKILL during that write leaves a corrupt file
    and the resumed run fails to load it. Here both files are written to temporary names and
    renamed, and Keras' double checkpoint keeps the previous epoch's pair as a fallback.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, double_checkpoint=True)

    @staticmethod
    def epoch_to_resume(backup_dir) -> int:
        """The epoch a run with this backup will start at (0 without one): what the metadata of its last save says."""
        metadata = Path(backup_dir) / "training_metadata.json"
        try:
            return int(json.loads(metadata.read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        for current, previous in ((self._weights_path, self._prev_weights_path),
                                  (self._training_metadata_path, self._prev_training_metadata_path)):
            if Path(current).exists():
                tmp = temp_path(previous)
                shutil.copyfile(current, tmp)
                tmp.replace(previous)
        atomic_write_weights(self._weights_path, self.model)
        atomic_write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen,
                                                         "seed_states": [v.numpy().tolist() for v in seed_states(self.model)]})

    def on_train_begin(self, logs=None):
        """Keras restores the weights and the epoch; the dropout layers' random states are not among the weights
        (a resumed run drew other dropout masks than an uninterrupted one): they are restored from the metadata."""
        super().on_train_begin(logs)
        metadata = Path(self._training_metadata_path)
        states = json.loads(metadata.read_text()).get("seed_states") if metadata.is_file() else None
        variables = seed_states(self.model)
        if states is not None and len(states) == len(variables):
            for variable, state in zip(variables, states):
                variable.assign(np.asarray(state, variable.dtype))


def seed_states(model) -> list:
    """The state variables of the model's Keras SeedGenerators (dropout masks), in the model's order."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]
