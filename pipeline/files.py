"""Atomic writes: a reader (or a resumed run) never sees a half-written file.

Everything is written to a temporary name in the destination folder, then renamed
(os.replace is atomic on POSIX filesystems).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, content: bytes) -> None:
    if hasattr(path, "atomic_write_bytes"):  # a URL (pipeline.storage.GFilePath): through tf.io.gfile
        return path.atomic_write_bytes(content)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def temp_path(path: str | Path) -> Path:
    """A hidden temporary sibling of path, for writers that need a file name (TFRecord, Keras)."""
    path = path if hasattr(path, "atomic_write_bytes") else Path(path)  # a URL path keeps its type
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
