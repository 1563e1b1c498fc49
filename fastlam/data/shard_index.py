"""The shard list and what a reader checks a shard against.

``shards.json`` (written by :mod:`fastlam.data.shard_writer`) gives each shard's URL, sample
count, byte size and sha256; a brace pattern of tars (``.../shard-{000..009}.tar``) gives only
the URLs, and the counts come from the tar headers. :func:`tar_samples` reads a tar's member
offsets from its headers and, for a damaged tar, keeps the samples before the damage and says
what it is; :func:`shard_damage` compares an opened shard with its ``shards.json`` entry. The
stream (:mod:`fastlam.data.shards`) decides what a damaged shard loses: only its bad samples.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile

from .remote import FileCache, default_cache, is_remote, read_bytes

__all__ = ["expand_braces", "join_url", "tar_samples", "read_shard_index", "shard_damage"]

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar, a-001.tar, a-002.tar`` (zero padding kept)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for v in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[:m.start()] + str(v).zfill(width) + pattern[m.end():])
    return out


def join_url(base: str, name: str) -> str:
    if is_remote(name) or os.path.isabs(name):
        return name
    return f"{base.rstrip('/')}/{name}" if is_remote(base) else os.path.join(base, name)


def tar_samples(f, size: int | None = None) -> tuple[list[tuple[str, dict[str, tuple[int, int]]]], str]:
    """``([(key, {ext: (data offset, size)})] in file order, damage)`` from the tar headers only.

    A damaged tar gives the samples before the damage and ``damage`` saying what it is (empty
    when none): a truncated tar ends early (a member's data running past the end of the file is
    not kept), a zeroed one reads as an early end of the archive."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    damage = ""
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as e:
                    damage = f"tar unreadable after {len(samples)} samples ({type(e).__name__}: {e})"
                    break
                if member is None:
                    break
                if not member.isfile():
                    continue
                if size is not None and member.offset_data + member.size > size:
                    damage = f"tar truncated: {member.name} runs past the end of the file ({size} bytes)"
                    break
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (member.offset_data, member.size)
    except (tarfile.TarError, EOFError, OSError) as e:  # not even a first header
        damage = f"not a readable tar ({type(e).__name__}: {e})"
    return samples, damage


def read_shard_index(source: str, cache: FileCache | None = None
                     ) -> tuple[list[str], list[int], list[dict | None], list[tuple[str, str]]]:
    """(shard URLs, samples per shard, per-shard ``{bytes, sha256}`` to verify or None,
    [(url, problem)] for shards of a brace pattern that could not be counted) from a
    ``shards.json`` or a brace pattern of tars."""
    source = str(source)
    if source.endswith(".json"):
        try:
            index = json.loads(read_bytes(source).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"source {source!r}: not a shard index, not even JSON ({e})") from None
        if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
            raise ValueError(f"source {source!r}: not a shard index (a shards.json written by "
                             f"'python -m fastlam.data shard' lists its 'shards')")
        base = source.rsplit("/", 1)[0] if "/" in source else "."
        checks = [({"bytes": int(s["bytes"]), "sha256": s["sha256"]} if "sha256" in s else None)
                  for s in index["shards"]]
        return ([join_url(base, s["url"]) for s in index["shards"]],
                [int(s["samples"]) for s in index["shards"]], checks, [])
    urls = expand_braces(source)
    cache = cache or default_cache()
    counts, problems = [], []
    for u in urls:  # no index: count from the tar headers (fetches each shard once)
        try:
            with cache.open(u) as f:
                samples, damage = tar_samples(f, os.fstat(f.fileno()).st_size)
        except OSError as e:  # missing (404) or unavailable after the retries: no samples
            samples, damage = [], f"{type(e).__name__}: {e}"
        counts.append(len(samples))
        if damage:
            problems.append((u, damage))
    return urls, counts, [None] * len(urls), problems


_verified: dict[tuple, str] = {}  # (path, size, mtime) -> sha256, per process: hashed once


def shard_damage(f, url: str, check: dict | None) -> str:
    """What is wrong with an opened shard against its ``shards.json`` entry ('' if nothing)."""
    if check is None:
        return ""
    st = os.fstat(f.fileno())
    if st.st_size != check["bytes"]:
        return f"size {st.st_size} bytes, shards.json says {check['bytes']}"
    key = (url, st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        f.seek(0)
        while chunk := f.read(1 << 20):
            h.update(chunk)
        _verified[key] = h.hexdigest()
    if _verified[key] != check["sha256"]:
        return "sha256 differs from shards.json"
    return ""
