"""Object storage for fastlam.data: any fsspec URL (``s3://``, ``gs://``, ``http(s)://``,
``memory://``, ``file://``) or a plain local path, with a bounded local cache of whole files.

Shards are read whole and several times per epoch (one per DataLoader worker that holds some
of their samples, and every epoch), so they are fetched once into ``cache_dir`` and read from
there; the cache keeps at most ``max_bytes`` (least recently used files are evicted first, the
file just fetched never). Files are written under a temporary name and renamed, so several
processes can share one cache directory; :meth:`FileCache.open` returns an open handle, which
stays valid on POSIX even if another process evicts the file right after.

Remote reads are retried: a transient error (HTTP 5xx / 408 / 429, a connection reset or
refused, a timeout) is retried up to ``FASTLAM_REMOTE_TRIES`` times in all (default 5) after
waits growing from ``FASTLAM_REMOTE_RETRY_S`` (default 1 s) by a factor of 2 (at most 30 s);
"does not exist" (404 / 410, ``FileNotFoundError`` of a local path) is not retried and raises
:class:`RemoteMissing` (a ``FileNotFoundError``); what is neither (403, ...) raises at once. A
transient error that outlasts the tries raises :class:`RemoteUnavailable` (an ``OSError``, never
a ``FileNotFoundError``: a refused connection does not mean the file is gone). fsspec's HTTP
file system reports every failure of its size query as ``FileNotFoundError`` with the real error
as its cause, which is why the cause chain, not the type, decides.

``s3://`` needs ``s3fs``, ``gs://`` ``gcsfs``, ``http(s)://`` ``aiohttp`` (the ``remote``
extra installs fsspec and aiohttp; add s3fs / gcsfs for those stores).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

__all__ = ["is_remote", "open_binary", "read_bytes", "with_retries", "RemoteMissing",
           "RemoteUnavailable", "FileCache", "default_cache"]


class RemoteMissing(FileNotFoundError):
    """The remote file does not exist (HTTP 404 / 410, or the store says so): not retried."""


class RemoteUnavailable(OSError):
    """A transient error (5xx, reset, refused, timeout) outlasted every retry."""


_TRANSIENT_STATUS = {408, 425, 429}
_MISSING_STATUS = {404, 410}


def _classify(exc: BaseException) -> str:
    """'missing', 'transient' or 'fatal', from the exception and its cause chain."""
    seen = exc
    chain = []
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        status = getattr(e, "status", None) or getattr(e, "code", None)
        if isinstance(status, int) and 400 <= status < 600:
            if status in _MISSING_STATUS:
                return "missing"
            return "transient" if status >= 500 or status in _TRANSIENT_STATUS else "fatal"
    for e in chain:
        if isinstance(e, FileNotFoundError) and e is chain[-1]:
            return "missing"  # nothing below it: the store itself says the file is not there
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in (
                "ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError",
                "ClientPayloadError", "ServerTimeoutError", "ClientOSError"):
            return "transient"
    return "fatal"


def retry_policy() -> tuple[int, float]:
    """(tries in all, first wait in seconds), from the environment (tests make waits tiny)."""
    tries = int(os.environ.get("FASTLAM_REMOTE_TRIES", 5))
    delay = float(os.environ.get("FASTLAM_REMOTE_RETRY_S", 1.0))
    if tries < 1 or not delay >= 0:
        raise ValueError(f"FASTLAM_REMOTE_TRIES must be >= 1 and FASTLAM_REMOTE_RETRY_S >= 0, "
                         f"got {tries!r} and {delay!r}")
    return tries, delay


retries_done = 0  # retries this process made (the tests count them)


def with_retries(what: str, fn):
    """``fn()``, retried on transient errors with exponential backoff (see the module doc)."""
    global retries_done
    tries, delay = retry_policy()
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:
            kind = _classify(e)
            if kind == "missing":
                raise RemoteMissing(f"{what}: does not exist ({type(e).__name__}: {e})") from e
            if kind == "fatal":
                raise
            if attempt == tries - 1:
                raise RemoteUnavailable(f"{what}: still failing after {tries} tries "
                                        f"({type(e).__name__}: {e})") from e
            time.sleep(min(30.0, delay * 2 ** attempt))
            retries_done += 1


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL with a scheme other than ``file://`` (those go through fsspec)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """A readable, seekable binary file object for a local path or an fsspec URL."""
    s = str(path)
    if not is_remote(s):
        return open(_local(s), "rb")
    import fsspec  # optional: fsspec (the remote extra)

    return with_retries(s, lambda: fsspec.open(s, "rb").open())


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file (one GET for a URL, retried as a whole: no range requests, which plain
    HTTP servers need not support)."""
    s = str(path)
    if not is_remote(s):
        with open(_local(s), "rb") as f:
            return f.read()
    import fsspec  # optional: fsspec (the remote extra)

    fs, remote_path = fsspec.core.url_to_fs(s)
    return with_retries(s, lambda: fs.cat_file(remote_path))


class FileCache:
    """Whole-file local copies of remote files, bounded to ``max_bytes`` in total."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_bytes: int = 8 << 30):
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int (cache size in bytes), got {max_bytes!r}")
        self.dir = Path(cache_dir if cache_dir is not None
                        else os.environ.get("FASTLAM_CACHE", Path(tempfile.gettempdir()) / "fastlam-cache"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fetched = 0  # downloads done by this process (the tests count them)
        self._lock = threading.Lock()

    def _name(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:24]
        suffix = "".join(Path(url.split("?")[0]).suffixes[-2:])[:16]
        return self.dir / (digest + suffix)

    def open(self, path: str | os.PathLike) -> IO[bytes]:
        """An open binary handle on the file, fetched into the cache first if remote."""
        s = str(path)
        if not is_remote(s):
            return open(_local(s), "rb")
        return self._open_cached(s, "rb")

    def local_path(self, path: str | os.PathLike) -> str:
        """A local path holding the file (the cached copy of a URL, fetched first if needed).
        Another process may evict the copy later: open it soon, or use :meth:`open`."""
        s = str(path)
        if not is_remote(s):
            return _local(s)
        self._open_cached(s, "rb").close()
        return str(self._name(s))

    def _open_cached(self, s: str, mode: str) -> IO[bytes]:
        target = self._name(s)
        for _ in range(3):
            try:
                f = open(target, mode)
                os.utime(target)  # recently used: evicted last
                return f
            except FileNotFoundError:
                self._fetch(s, target)
        raise OSError(f"{s}: fetched into the cache {self.dir} but evicted again before it "
                      f"could be opened 3 times; raise max_bytes ({self.max_bytes})")

    def _fetch(self, url: str, target: Path) -> None:
        import fsspec  # optional: fsspec (the remote extra)

        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".part-")
        os.close(fd)
        try:
            # One streamed GET (no range requests: plain HTTP servers need not support them),
            # retried whole on transient errors.
            fs, remote_path = fsspec.core.url_to_fs(url)
            with_retries(url, lambda: fs.get_file(remote_path, tmp))
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        with self._lock:
            self.fetched += 1
        self._evict(keep=target)

    def _evict(self, keep: Path) -> None:
        entries = []
        for p in self.dir.iterdir():
            if p.name.startswith(".part-"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # evicted by another process meanwhile
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                total -= size

    def bytes_used(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if not p.name.startswith(".part-"))


_default: FileCache | None = None


def default_cache() -> FileCache:
    """The process-wide cache (``$FASTLAM_CACHE``, ``$FASTLAM_CACHE_BYTES``, default 8 GiB)."""
    global _default
    where = os.environ.get("FASTLAM_CACHE")
    if _default is None or (where is not None and Path(where) != _default.dir):
        # Made again when $FASTLAM_CACHE changes (a test, or a run pointing it elsewhere).
        _default = FileCache(max_bytes=int(os.environ.get("FASTLAM_CACHE_BYTES", 8 << 30)))
    return _default
