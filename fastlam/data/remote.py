"""Object storage for fastlam.data: any fsspec URL (``s3://``, ``gs://``, ``http(s)://``,
``memory://``, ``file://``) or a plain local path, with a bounded local cache of whole files.

Shards are read whole and several times per epoch (one per DataLoader worker that holds some
of their samples, and every epoch), so they are fetched once into ``cache_dir`` and read from
there; the cache keeps at most ``max_bytes`` (least recently used files are evicted first, the
file just fetched never). Files are written under a temporary name and renamed, so several
processes can share one cache directory; :meth:`FileCache.open` returns an open handle, which
stays valid on POSIX even if another process evicts the file right after.

``s3://`` needs ``s3fs``, ``gs://`` ``gcsfs``, ``http(s)://`` ``aiohttp`` (the ``remote``
extra installs fsspec and aiohttp; add s3fs / gcsfs for those stores).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import IO

__all__ = ["is_remote", "open_binary", "FileCache", "default_cache"]


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

    return fsspec.open(s, "rb").open()


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
        target = self._name(s)
        for _ in range(3):
            try:
                f = open(target, "rb")
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
            # One streamed GET (no range requests: plain HTTP servers need not support them).
            fs, remote_path = fsspec.core.url_to_fs(url)
            fs.get_file(remote_path, tmp)
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
    if _default is None:
        _default = FileCache(max_bytes=int(os.environ.get("FASTLAM_CACHE_BYTES", 8 << 30)))
    return _default
