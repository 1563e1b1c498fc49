"""A map-style dataset of fixed-length clips from a folder or list of real videos.

Robustness policy (in-the-wild folders always contain some broken files):

* A file that cannot be decoded (corrupt, truncated, zero-length, audio-only, not a video)
  is recorded in :attr:`VideoClipDataset.bad_files` with the reason and never opened again;
  the item is served from the next readable video in the list (cyclically), so a given
  ``(seed, epoch, index)`` always yields the same clip whatever order workers ran in.
* A read that takes longer than ``decode_timeout_s`` (a damaged stream the decoder crawls
  through) counts as a bad file too; the check runs between decoded frames.
* Videos shorter than a clip: ``short_policy="pad"`` repeats the last available frame,
  ``"skip"`` treats the video as bad.
* A video whose stated duration (the manifest's, else the header's) runs past its real end:
  a clip start drawn past that end finds no frame. The clip is still served, from as far back
  as the missing frames need, else from t=0, so the item is never lost; but the file is
  listed in :meth:`report` (and the run summary) as overstating its duration, with the stated
  duration and the start that failed, because every such clip starts early: re-index the
  manifest (``python -m fastlam.data index``) to fix it. A start that finds some frames but
  not all (headers are often a frame or two off) is moved back quietly.
* With DataLoader workers each worker holds its own copy of the dataset, so pass
  ``bad_file_log`` (a path) to share what workers find: they append one JSON line per bad
  file, every copy reads it back, and :meth:`report` in the main process sees them all
  (:class:`fastlam.data.bad_log.BadLog`, the record every source shares).
* More than ``max_bad_fraction`` of the files bad (``data.max_bad_fraction``): a
  :class:`~fastlam.data.bad_log.TooManyBadInputs` error naming the worst files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from ..inputs import InputError, check_path_list, describe_path
from .bad_log import BadLog
from .decoding import (
    ClipTooShort,
    VideoDecodeError,
    check_clip_args,
    decode_errors,
    open_video,
    probe_opened,
    read_clip_opened,
    resized_frame_shape,
    stream_sar,
)
from .manifest import ManifestMeta, is_manifest, load_manifest
from .seeding import mix_seed
from .video import VIDEO_EXTENSIONS, DecodedVideo, clip_to_tensor, decode_video
from .walk import walk_videos, warn_unreadable

PathLike = str | Path

__all__ = ["VideoClipDataset", "VIDEO_EXTENSIONS", "list_videos"]


def list_videos(source, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                unreadable: list[dict] | None = None) -> list[str]:
    """Resolve ``source`` (directory, text file of paths, list of paths, or one video file).

    Raises ``ValueError`` naming ``source`` when it is missing or yields no videos. Directories
    that cannot be listed are warned about and appended to ``unreadable`` when a list is given.
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if isinstance(source, (str, os.PathLike)):
        src = Path(source)
        if not src.exists():
            raise ValueError(f"source {str(src)!r} does not exist (expected a directory of "
                             f"videos, a text file listing video paths, or a list of paths)")
        if src.is_dir():
            found, skipped = walk_videos(src, exts)
            warn_unreadable(source, skipped)
            if unreadable is not None:
                unreadable.extend(skipped)
            paths = sorted(p for p in found if os.path.isfile(p))
            if not paths:
                where = f" ({len(skipped)} unreadable director{'y' if len(skipped) == 1 else 'ies'}, " \
                        f"first {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
                raise ValueError(f"source {str(src)!r}: no video files found searching the "
                                 f"directory recursively for extensions {list(exts)}{where}")
            return paths
        if src.suffix.lower() in exts:
            return [str(src)]  # a single video
        try:
            lines = src.read_text().splitlines()
        except UnicodeDecodeError:
            raise InputError(f"source {str(src)!r} is {describe_path(src)}, neither a directory nor a text file "
                             f"listing video paths") from None
        # Relative entries are relative to the list file, so a list travels with its data.
        paths = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line).expanduser()
            paths.append(str(p if p.is_absolute() else src.parent / p))
        if not paths:
            raise InputError(f"source {str(src)!r}: the file list has no paths ({describe_path(src)}; "
                             f"one path per line, blank lines and '#' comments are ignored)")
        check_path_list(src, paths, "source", "a directory of videos, or a text file listing video paths "
                                              "(one per line, relative to the list's folder)")
        return paths
    if isinstance(source, Iterable):
        paths = [str(p) for p in source]
        if not paths:
            raise ValueError("source is an empty list of paths (expected at least one video)")
        return paths
    raise ValueError(f"source must be a directory, a text file of paths or a list of paths, "
                     f"got {type(source).__name__}")


class VideoClipDataset(Dataset):
    """Clips of ``num_frames`` frames at ``fps`` from every video in ``source``.

    Item ``i`` is clip ``i % clips_per_video`` of video ``i // clips_per_video``, returned as
    float ``(3, num_frames, H, W)`` in ``[0, 1]``; the default collate stacks items into
    ``(B, 3, num_frames, H, W)``. Clip starts are random but a pure function of
    ``(seed, epoch, i)``; call :meth:`set_epoch` before each epoch (with non-persistent
    workers, which re-copy the dataset every epoch). With ``clips_per_video > 1`` the video's
    valid start range is split into that many strata, one clip drawn in each, so the clips
    cover the whole video.

    ``cache_mb > 0`` keeps whole videos decoded (resized for ``size``, before cropping) in
    memory, per process, until that many MiB are used; later clips of a cached video are
    indexed instead of decoded, with bit-identical results. Worth it when a small corpus is
    sampled many times (``clips_per_video`` large), e.g. the CPU sample-video training.
    ``decode_timeout_s`` bounds one read (or one whole-video decode when caching).
    """

    def __init__(
        self,
        source: PathLike | Sequence[PathLike],
        *,
        num_frames: int = 16,
        fps: float = 4.0,
        size: tuple[int, int] = (256, 256),
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        short_policy: str = "pad",
        crop: str = "random",
        seed: int = 0,
        clips_per_video: int = 1,
        bad_file_log: PathLike | None = None,
        decode_timeout_s: float | None = 60.0,
        cache_mb: float = 0.0,
        max_bad_fraction: float = 1.0,
    ):
        check_clip_args(num_frames, fps, 0.0, tuple(size), crop)
        if short_policy not in ("pad", "skip"):
            raise ValueError(f"short_policy must be 'pad' or 'skip', got {short_policy!r}")
        if not isinstance(clips_per_video, int) or clips_per_video < 1:
            raise ValueError(f"clips_per_video must be a positive int, got {clips_per_video!r}")
        self.manifest = None
        self.unreadable: list[dict] = []  # directories of a source folder that could not be listed
        if is_manifest(source):
            # Probed offline (`python -m fastlam.data index`): no file is listed or probed here.
            self.manifest = load_manifest(source)
            if not len(self.manifest):
                raise ValueError(f"source {str(source)!r}: the manifest lists no usable video "
                                 f"({self.manifest.bad} bad rows)")
            self.paths = self.manifest.paths
        else:
            self.paths = list_videos(source, extensions, self.unreadable)
        self.num_frames = num_frames
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.short_policy = short_policy
        self.crop = crop
        self.seed = int(seed)
        self.clips_per_video = clips_per_video
        if decode_timeout_s is not None and not decode_timeout_s > 0:
            raise ValueError(f"decode_timeout_s must be > 0 seconds or None, "
                             f"got {decode_timeout_s!r}")
        self.decode_timeout_s = decode_timeout_s
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0 (0 turns the cache off), got {cache_mb!r}")
        self.cache_mb = float(cache_mb)
        self.bad_file_log = str(bad_file_log) if bad_file_log is not None else None
        self.epoch = 0
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.max_bad_fraction = float(max_bad_fraction)
        # Bad files, and videos whose stated duration is overstated (path -> what showed it).
        self._bad_log = BadLog(self.bad_file_log)
        # path -> (header duration, est. bytes); read from the manifest when there is one.
        self._meta = ({} if self.manifest is None
                      else ManifestMeta(self.manifest, max(self.size)))
        self._cache: dict[str, DecodedVideo] = {}
        self._cache_bytes = 0
        self._padded: dict[str, int] = {}

    def __getstate__(self):
        # Decoded frames stay in the process that decoded them: each DataLoader worker
        # fills its own cache instead of receiving a pickled copy of the parent's.
        state = dict(self.__dict__)
        state["_cache"], state["_cache_bytes"] = {}, 0
        return state

    def __len__(self) -> int:
        return len(self.paths) * self.clips_per_video

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ---- bad-file bookkeeping (fastlam.data.bad_log: the one mechanism every source uses) ----
    @property
    def _bad(self) -> dict[str, str]:
        """This copy's bad files (without reading other processes' entries)."""
        return self._bad_log.reasons("bad", sync=False)

    def _mark_bad(self, path: str, reason: str) -> None:
        if self._bad_log.add("bad", path, reason):
            self._bad_log.check_share(len(self.paths), self.max_bad_fraction, "video files")

    def _mark_overstated(self, path: str, what: str) -> None:
        self._bad_log.add("overstated", path, what)

    @property
    def bad_files(self) -> dict[str, str]:
        """path -> reason for every file found unusable so far (all workers, with a log)."""
        return self._bad_log.reasons("bad")

    @property
    def overstated(self) -> dict[str, str]:
        """path -> what showed it: videos that end before their stated duration (all workers,
        with a log); their late clips were served from earlier starts."""
        return self._bad_log.reasons("overstated")

    def report(self) -> str:
        bad = self.bad_files
        overstated = self.overstated
        n = len(self.paths)
        lines = [f"{len(bad)} of {n} video files unusable ({100.0 * len(bad) / max(n, 1):.1f}%)"
                 + (":" if bad else "")]
        for path, reason in sorted(bad.items()):
            lines.append(f"  {path}: {reason}")
        if self._padded:
            lines.append(f"{len(self._padded)} short video(s) padded by repeating the last "
                         f"frame (short_policy='pad')")
        if overstated:
            lines.append(f"{len(overstated)} video(s) end before their stated duration (manifest or header): "
                         f"their clips drawn past the end start earlier; re-index to fix:")
            lines += [f"  {path}: {what}" for path, what in sorted(overstated.items())]
        if self.unreadable:
            n_dirs = len(self.unreadable)
            lines.append(f"{n_dirs} director{'y' if n_dirs == 1 else 'ies'} of the source could not be "
                         f"read; their videos are not in the dataset:")
            lines += [f"  {u['path']}: {u['reason']}" for u in self.unreadable]
        return "\n".join(lines)

    # ---- reading ---------------------------------------------------------------------------
    @property
    def cached_mb(self) -> float:
        """Decoded frames held by this copy of the dataset, in MiB."""
        return self._cache_bytes / 2**20

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))

    def _try_read(self, path: str, clip_index: int, gen: torch.Generator):
        """A clip of ``path`` as uint8 (T, H, W, 3), or None after marking the file bad."""
        span = (self.num_frames - 1) / self.fps
        container = stream = None
        decoded = self._cache.get(path)
        try:
            if decoded is None:
                container, stream = open_video(path)
                if path not in self._meta:
                    info = probe_opened(path, container, stream, exact=False)
                    rh, rw = resized_frame_shape(stream.width, stream.height, stream_sar(stream),
                                                 max(self.size))
                    self._meta[path] = (info.duration_s, info.num_frames * rh * rw * 3)
                est_bytes = self._meta[path][1]
                if self.cache_mb and self._cache_bytes + est_bytes <= self.cache_mb * 2**20:
                    container.close()
                    container = None
                    decoded = decode_video(path, size=self.size,
                                           timeout_s=self.decode_timeout_s)
                    # Header frame counts are estimates; the real size decides, and is
                    # remembered so a video that did not fit is not decoded whole again.
                    self._meta[path] = (self._meta[path][0], decoded.nbytes)
                    if self._cache_bytes + decoded.nbytes <= self.cache_mb * 2**20:
                        self._cache[path] = decoded
                        self._cache_bytes += decoded.nbytes
            # The header duration, also when cached, so caching never changes which clip an
            # index gets (the decoded length could differ from the header by a frame).
            duration = self._meta[path][0]

            def read(start, rewind):
                if decoded is not None:
                    return decoded.clip(num_frames=self.num_frames, fps=self.fps,
                                        start_s=start, crop=self.crop, generator=gen)
                return read_clip_opened(path, container, stream, self.num_frames, self.fps, start,
                                        self.size, self.crop, gen, rewind=rewind,
                                        timeout_s=self.decode_timeout_s)

            # One draw per item even when the start is forced to 0, so the crop offsets
            # (drawn next from the same generator) do not depend on the video's length.
            u = float(torch.rand((), generator=gen, dtype=torch.float64))
            # Strictly inside: the last sampled instant must fall before the video ends.
            room = max(0.0, duration - span - 1e-3)
            start = room * (clip_index + u) / self.clips_per_video
            # Only the frames and the reason of a ClipTooShort are kept, never the exception:
            # its traceback holds this frame (a reference cycle) and the decoder's frames, so
            # the PyAV codec context, with its FFmpeg threads, would outlive the read until a
            # garbage collection, which in a process forked meanwhile (the watchdog's child,
            # DataLoader workers) joins threads that do not exist there and hangs forever.
            try:
                return read(start, rewind=False)
            except ClipTooShort as e:
                frames, reason = e.frames, e.reason
            if not (len(frames) if frames is not None else 0) and start > 0:
                self._mark_overstated(path, f"stated duration {duration:.2f} s, but a clip start at "
                                            f"{start:.2f} s finds no frame")
            # The header duration overstated the video (it can be off by frames, or be an
            # estimate): move the start back by what was missing, then to 0.
            got = len(frames) if frames is not None else 0
            for retry in (max(0.0, start - (self.num_frames - got) / self.fps), 0.0):
                if retry >= start:
                    continue
                start = retry
                try:
                    return read(start, rewind=True)
                except ClipTooShort as e:
                    frames, reason = e.frames, e.reason
            got = len(frames) if frames is not None else 0
            if self.short_policy == "pad" and got > 0:
                self._padded[path] = got
                pad = frames[-1:].expand(self.num_frames - got, -1, -1, -1)
                return torch.cat([frames, pad], 0)
            self._mark_bad(path, reason if got else f"no decodable frames ({reason})")
            return None
        except VideoDecodeError as e:
            self._mark_bad(path, e.reason)
            return None
        except decode_errors() as e:
            self._mark_bad(path, f"decoding failed: {type(e).__name__}: {e}")
            return None
        finally:
            if container is not None:
                container.close()

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} clips")
        index %= n
        video, clip_index = divmod(index, self.clips_per_video)
        self._bad_log.sync()
        num_videos = len(self.paths)
        bad = self._bad
        for offset in range(num_videos):
            path = self.paths[(video + offset) % num_videos]
            if path in bad:
                continue
            # A fresh generator per attempt keeps a substitute's clip independent of how many
            # bad files were tried before it (which depends on what this copy already knew).
            clip = self._try_read(path, clip_index, self._generator(index))
            if clip is not None:
                return clip_to_tensor(clip)
        raise RuntimeError(f"no readable video left in the dataset ({num_videos} files): "
                           + self.report())
