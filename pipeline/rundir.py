"""RunDir: the files of one run directory, and the state they say the run is in.

Stages hand each other files in one directory; this is the only place that names them:

    RUN/config.yaml               the resolved config (preprocess writes it, train rewrites it)
    RUN/features/                 *.tfrecord shards, index.json (finished), preprocess_state.json (started),
                                  encoder.weights.h5 (the frame encoder the features were made with)
    RUN/preprocess_errors.csv     clips skipped, with the reason
    RUN/model.keras               the trained model; RUN/train_done.json says training finished
    RUN/history.csv, training_curves.png, tensorboard/, train_state/ (checkpoints while training)
    RUN/frame_encoder.weights.h5  a hybrid run's trained CNN (usable as another run's preprocess.weights)
    RUN/stages/<model>/           train.unimodal_first: the single-modality runs trained first (features: a link to RUN's)
    RUN/export/                   what `actrec export` wrote (export_failed.log: when it could write nothing)
    RUN/eval/<name>/              what `actrec evaluate` wrote
    RUN/predict/                  timelines of `actrec predict --window`

Files are written under temporary names (.NAME.PID.tmp, see pipeline.files) and renamed; a writer holds RUN/.lock
(RunDir.lock), and on taking it removes the temporary files of writers that are no longer running.
A run dir may be a URL (gs://...) that tf.io.gfile reaches (see pipeline.storage).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline import storage
from pipeline.config import Config, features_hash, load_config
from pipeline.errors import UserError
from pipeline.files import temp_file_pid

MODEL_FILE = "model.keras"


class RunDir:
    """RunDir(path): file names of a run dir (attributes are paths) and checks with one-line errors."""

    def __init__(self, path: str | os.PathLike | RunDir):
        self.path = path.path if isinstance(path, RunDir) else storage.path(path)
        p = self.path
        if isinstance(p, Path) and p.is_file():
            raise UserError(f"{p}: is a file; --run-dir names a run directory (made by `actrec preprocess`)")
        self.config_file = p / "config.yaml"
        self.features = p / "features"
        self.index_file = self.features / "index.json"
        self.preprocess_state = self.features / "preprocess_state.json"
        self.encoder_weights = self.features / "encoder.weights.h5"
        self.errors_csv = p / "preprocess_errors.csv"
        self.model = p / MODEL_FILE
        self.train_done = p / "train_done.json"
        self.history = p / "history.csv"
        self.curves = p / "training_curves.png"
        self.tensorboard = p / "tensorboard"
        self.train_state = p / "train_state"
        self.frame_encoder_weights = p / "frame_encoder.weights.h5"
        self.export = p / "export"
        self.export_failed_log = p / "export_failed.log"  # the converter's output when no format could be written
        self.predictions = p / "predict"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @contextlib.contextmanager
    def lock(self, command: str):
        """Hold RUN/.lock while `command` writes this run dir: a second writer refuses with one line naming the first.

        A lock left by a killed process (its pid is gone, or now names another process: the lock records its writer's
        start time) is taken over, and the temporary files killed writers left are removed. URL run dirs are not locked.
        """
        if not isinstance(self.path, Path):
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock_file = self.path / ".lock"
        me = {"pid": os.getpid(), "command": command, "started": process_started(os.getpid())}
        for _ in range(2):
            try:
                fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(lock_file.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    holder = {}
                pid = holder.get("pid")
                if isinstance(pid, int) and pid != os.getpid() and writer_alive(pid, holder.get("started")):
                    raise UserError(f"{self}: `actrec {holder.get('command', '?')}` (pid {pid}) is writing this run dir; "
                                    f"wait for it to finish or stop it") from None
                lock_file.unlink(missing_ok=True)  # its process is gone: take the lock over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        self._remove_dead_writers_temp_files()
        try:
            yield
        finally:
            lock_file.unlink(missing_ok=True)
            if created and self.path.is_dir() and not any(self.path.iterdir()):  # a command that failed before writing leaves no trace
                self.path.rmdir()

    def _remove_dead_writers_temp_files(self) -> None:
        """Remove the temporary files (pipeline.files: named by their writer's PID) that writers killed mid-write left in
        RUN/ and RUN/features/. Called holding the lock: no other writer of this run dir is running, and a file whose
        PID still runs (this process, or an unrelated process that reuses a dead writer's PID) is kept."""
        for folder in (self.path, self.features):
            for entry in folder.iterdir() if folder.is_dir() else ():
                pid = temp_file_pid(entry.name)
                if pid is not None and not pid_alive(pid) and entry.is_file() and not entry.is_symlink():
                    with contextlib.suppress(OSError):  # best effort: a file that stays costs space, not correctness
                        entry.unlink()

    def eval_dir(self, name: str) -> Path:
        return self.path / "eval" / name

    # ---- state, with the one error message each

    def read_index(self) -> dict:
        """features/index.json: classes, counts, shards, feature shapes (written when preprocessing finished)."""
        if not self.index_file.is_file():
            raise UserError(f"{self}: no cached features (features/index.json missing); "
                            f"run `actrec preprocess --config FILE --run-dir {self}` first")
        return read_json(self.index_file)

    def require_model(self, allow_unfinished: bool = False):
        """The path of model.keras; a one-line error when there is none, or when training did not finish."""
        if not self.model.is_file():
            raise UserError(f"{self}: no trained model ({MODEL_FILE}); run `actrec train --run-dir {self}` first")
        if not allow_unfinished and not self.train_done.is_file():
            raise UserError(f"{self}: training did not finish (no {self.train_done.name}); run `actrec train --run-dir {self}` "
                            f"again to resume it, or pass --allow-unfinished to use the model as it is")
        return self.model

    def config(self, config: Config | str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
        """The config of this run: `config`/overrides when given, else the run's own config.yaml.

        Its data and preprocess settings must be the ones the cached features were made with.
        """
        index = self.read_index()  # no features: say which command makes them
        if isinstance(config, Config):
            cfg = config
        elif config is not None:
            cfg = load_config(config, overrides)
        else:
            cfg = load_config(self.config_file if self.config_file.is_file() else None, overrides)
        cfg = absolute_paths(cfg)
        if index["config_hash"] != features_hash(cfg):
            raise UserError(
                f"{self}: the config's data/preprocess settings differ from the ones the features were made with; "
                f"re-run `actrec preprocess --overwrite` with this config or use the run's own config.yaml"
            )
        return cfg


def absolute_paths(cfg: Config) -> Config:
    """cfg with its file paths (data.root, data.manifest, preprocess.weights) made absolute, relative to the working
    directory they were given in: a run dir saves them so, and works from any directory and when copied elsewhere."""
    import dataclasses

    def absolute(value):
        if value in (None, "", "imagenet") or storage.is_url(value):
            return value
        return str(Path(value).expanduser().absolute())

    data = dataclasses.replace(cfg.data, root=absolute(cfg.data.root), manifest=absolute(cfg.data.manifest))
    return dataclasses.replace(cfg, data=data, preprocess=dataclasses.replace(cfg.preprocess, weights=absolute(cfg.preprocess.weights)))


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if it is gone or cannot be read."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def writer_alive(pid: int, started: float | None) -> bool:
    """Whether the writer that recorded (pid, started) still runs: its pid exists and, when the start time was recorded,
    the process with that pid started then (a pid the system reused for another process is not the writer)."""
    if not pid_alive(pid):
        return False
    now_started = process_started(pid)
    return started is None or now_started is None or abs(now_started - float(started)) < 1.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (this one included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_json(path) -> dict:
    """A JSON file the pipeline wrote; a damaged one is a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged ({type(e).__name__}: {e}); re-run the stage that writes it") from None
