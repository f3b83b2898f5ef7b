"""Atomic writes: a reader (or a resumed run) never sees a half-written file.

    content (bytes | text | JSON | a Keras model's weights) --> DEST/.<name>.<PID>[-<random>].tmp --os.replace--> DEST/<name>

Everything is written to a temporary name in the destination folder, then renamed (os.replace is atomic on POSIX
filesystems). A write that fails removes its temporary file and raises one OSError naming the destination (the CLI
prints it as one line). The temporary name carries the writer's PID (`temp_file_pid` reads it back), so the files a
killed writer left behind are recognised and removed by the next writer of the run dir (pipeline.rundir).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

# .<name>.<PID>.tmp (temp_path), .<name>.<PID>-<random>.tmp (atomic_write_bytes); writers that need the destination's
# extension (Keras) swap .tmp for theirs: .<name>.<PID>.keras, .<name>.<PID>.weights.h5, .<name>.<PID>.png
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)(?:-\w+)?\.(?:tmp|keras|weights\.h5|png)")


def atomic_write_bytes(path: str | Path, content: bytes) -> None:
    if hasattr(path, "atomic_write_bytes"):  # a URL (pipeline.storage.GFilePath): through tf.io.gfile
        return path.atomic_write_bytes(content)
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # f.write's error names no file: name the one the user knows (not the temporary)
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_weights(path: str | Path, model) -> None:
    """A Keras model's weights as a .weights.h5 file (model.load_weights reads it).

    HDF5 is written to memory first: when h5py itself writes to a full disk it prints "Exception ignored" tracebacks
    and a multi-line error stack, and the process dies with SIGSEGV at exit (measured on h5py 3.16). The bytes then
    go through atomic_write_bytes: a failure is one OSError naming path, and leaves no file.
    """
    from keras.src.saving import saving_lib  # model.save_weights takes only file names; its store also takes BytesIO

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    store.close()
    atomic_write_bytes(path, buffer.getvalue())


def temp_path(path: str | Path) -> Path:
    """A hidden temporary sibling of path, for writers that need a file name (TFRecord, Keras)."""
    path = path if hasattr(path, "atomic_write_bytes") else Path(path)  # a URL path keeps its type
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_file_pid(name: str) -> int | None:
    """The PID of the writer whose temporary file (temp_path, atomic_write_bytes) is named `name`; None for other names."""
    match = _TEMP_NAME.fullmatch(name)
    return int(match["pid"]) if match else None


def write_error(path: str | Path, message: str) -> OSError:
    """One OSError naming path for a failed write of a library that reports the system error only in its message
    (TensorFlow's file writers: 'RUN/features/.x.tfrecord.12.tmp; File too large'). Its errno is the one whose text
    the message holds (the longest, if several do; EIO if none), so the CLI tells a full disk from a bug."""
    found = [code for code in errno.errorcode if code and os.strerror(code) in message]
    if not found:
        return OSError(errno.EIO, (message.strip().splitlines() or ["write failed"])[-1], str(path))
    code = max(found, key=lambda c: len(os.strerror(c)))
    return OSError(code, os.strerror(code), str(path))
