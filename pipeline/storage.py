"""Run-dir paths that are local folders or URLs (gs://bucket/runs/x, ram://x, ...), with one small API.

    path("runs/x")          -> pathlib.Path   (local: TensorFlow-free, atomic os.replace)
    path("gs://b/runs/x")   -> GFilePath      (the same small subset of pathlib, through tf.io.gfile)

A distributed preprocess (Apache Beam on Dataflow, Flink, Spark) writes its run dir from many machines,
so the run dir must be shared storage: a bucket URL or a shared mount. The preprocess stage handles its
run dir through this module; which URL schemes work is whatever the installed TensorFlow's file systems
support (gs:// is built in; s3:// and hdfs:// need tensorflow-io's plugins; ram:// is in-process memory,
which the tests use). Indexing data.root, train, evaluate and export still read local paths only.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError


def is_url(path) -> bool:
    """True for 'scheme://...' locations (handled by tf.io.gfile), False for local paths."""
    return isinstance(path, GFilePath) or (isinstance(path, str) and "://" in path)


def path(location: str | os.PathLike) -> Path | GFilePath:
    """A local Path, or a GFilePath for a URL after checking TensorFlow can reach it (one-line UserError if not)."""
    if isinstance(location, GFilePath):
        return location
    if not is_url(location):
        return Path(location)
    import tensorflow as tf

    url = GFilePath(str(location))
    try:
        url.exists()
    except tf.errors.OpError as e:  # unknown scheme, no network, no permission
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{location}: run dir is not reachable through tf.io.gfile ({reason})") from None
    return url


def rmtree(location: Path | GFilePath) -> None:
    if isinstance(location, GFilePath):
        location.rmtree()
    else:
        shutil.rmtree(location)


@contextlib.contextmanager
def local_copy(location: Path | GFilePath) -> Iterator[Path]:
    """A local file with the content of `location` (the file itself when it is local), for readers
    that need a file name (OpenCV, h5py)."""
    if not isinstance(location, GFilePath):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="actrec-") as tmp:
        local = Path(tmp) / location.name
        location.copy_to(local)
        yield local


class GFilePath:
    """The part of pathlib.Path the run dir code uses, for a URL, through tf.io.gfile.

    It is deliberately not os.PathLike: handing it to a local-file API fails loudly instead of
    creating a local folder named 'gs:'.
    """

    def __init__(self, url: str):
        self._url = url.rstrip("/") if not url.endswith("://") else url

    # -- names
    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"GFilePath({self._url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, GFilePath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __truediv__(self, part: str) -> GFilePath:
        return GFilePath(posixpath.join(self._url, str(part)))

    @property
    def name(self) -> str:
        return posixpath.basename(self._url)

    @property
    def parent(self) -> GFilePath:
        return GFilePath(posixpath.dirname(self._url))

    def with_name(self, name: str) -> GFilePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> GFilePath:
        stem, _ = posixpath.splitext(self.name)
        return self.with_name(stem + suffix)

    # -- queries
    def exists(self) -> bool:
        return _gfile().exists(self._url)

    def is_dir(self) -> bool:
        return _gfile().isdir(self._url)

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    # -- reading and writing
    def read_bytes(self) -> bytes:
        with _gfile().GFile(self._url, "rb") as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def atomic_write_bytes(self, content: bytes) -> None:
        """Write to a temporary sibling, then rename: readers never see a half-written file
        (on object stores the renamed object appears whole)."""
        tmp = self.with_name(f".{self.name}.{os.getpid()}.tmp")
        self.parent.mkdir(parents=True, exist_ok=True)
        with _gfile().GFile(str(tmp), "wb") as f:
            f.write(content)
        tmp.replace(self)

    def copy_to(self, local: Path) -> None:
        _gfile().copy(self._url, str(local), overwrite=True)

    # -- changing the tree
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        _gfile().makedirs(self._url)  # object stores have no folders: always "parents", always "exist_ok"

    def replace(self, target: GFilePath | str) -> GFilePath:
        _gfile().rename(self._url, str(target), overwrite=True)
        return target if isinstance(target, GFilePath) else GFilePath(target)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        _gfile().remove(self._url)

    def rmtree(self) -> None:
        if self.exists():
            _gfile().rmtree(self._url)


def _gfile():
    import tensorflow as tf  # only URL paths need TensorFlow; local paths stay TF-free (decode workers)

    return tf.io.gfile
