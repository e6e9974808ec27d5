"""Files on disk: the cache folder, atomic downloads, file digests and safe tar extraction."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ancra.errors import UserError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

DOWNLOAD_TIMEOUT_S = 60.0
"""Socket timeout for downloads: long enough for a slow mirror, short enough to fail clearly."""


def default_cache_dir() -> Path:
    """Where downloads go when no data directory is given (``~/.cache/ancra``)."""
    return Path.home() / ".cache" / "ancra"


_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException)  # URLError, HTTPError, timeouts are OSError


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically (temp file in the same folder, then rename).

    Atomicity matters because an interrupted download must not leave a truncated file that a
    later run would find and try to use.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True):
    """Hold an exclusive advisory lock (``flock``) on ``path`` (created if needed); yields True
    once held, or False at once when ``blocking`` is False and another process holds it. The
    kernel drops the lock when its holder dies, so a killed process never leaves it taken."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def preparing(folder: Path):
    """Serialise the preparation (download, extraction, decoding) of a dataset folder between
    processes, e.g. every rank of a first torchrun job: the first one prepares while the others
    wait here, then find the folder ready (callers check again inside). The lock file lives in
    ``~/.cache/ancra/locks/`` (named by the folder's path), not in the data folder; where it
    cannot be created nobody is serialised."""
    name = hashlib.sha256(str(Path(folder).expanduser().resolve()).encode()).hexdigest()[:32]
    with contextlib.ExitStack() as held:
        try:
            locks = default_cache_dir() / "locks"
            locks.mkdir(parents=True, exist_ok=True)
            held.enter_context(file_lock(locks / f"{name}.lock"))
        except OSError:
            pass  # no lock where none can be made
        yield


def file_digest(path: PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks (dataset checks, checkpoint hashes in reports)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract without letting member names escape ``dest`` or create links/devices."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()  # pragma: no cover - Python without extraction filters
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise UserError(f"{tar.name}: refusing to extract suspicious member {member.name!r}")
    tar.extractall(dest)
