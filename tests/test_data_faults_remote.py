"""Faults in shards and remote reads end with nothing lost silently (issue 26, findings 2-4):
every case either goes on with a report of exactly what was skipped and why, or stops with a
clear error once more than ``data.max_bad_fraction`` of the epoch is bad.

A local HTTP server on 127.0.0.1 (ephemeral port) injects 503s, connection resets and 404s, and
serves Range requests. Retry waits are made tiny through ``FASTLAM_REMOTE_RETRY_S``: no test
depends on how long anything takes. Tiny videos are generated with PyAV."""
import functools
import hashlib
import http.server
import io
import json
import shutil
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("pyarrow")

from fastlam.data import __main__ as data_cli  # noqa: E402
from fastlam.data import remote  # noqa: E402
from fastlam.data import shard_writer  # noqa: E402
from fastlam.data.bad_log import TooManyBadInputs  # noqa: E402
from fastlam.data.manifest import build_manifest  # noqa: E402
from fastlam.data.remote import FileCache, RemoteMissing, RemoteUnavailable, with_retries  # noqa: E402
from fastlam.data.shard_writer import ShardFolderError  # noqa: E402
from fastlam.data.shards import ShardLoader, ShardStream, write_shards  # noqa: E402
from shard_corpus import make_corpus  # noqa: E402

CLIP = dict(num_frames=4, fps=4.0, size=(32, 32))


def _two_largest_plus(paths):  # room for two samples a shard (4 shards of 8)
    sizes = sorted(p.stat().st_size for p in paths)
    return sizes[-1] + sizes[-2] + 6000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 good videos, a manifest of them, and shards of 2 samples each (4 shards)."""
    return make_corpus(tmp_path_factory.mktemp("faults_corpus"), 8, _two_largest_plus)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTLAM_REMOTE_RETRY_S", "0.001")
    monkeypatch.setenv("FASTLAM_REMOTE_TRIES", "4")
    monkeypatch.setenv("FASTLAM_CACHE", str(tmp_path / "default-cache"))


# ------------------------------------------------------------------------------ the server
class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory`` with Range support; ``faults[path]`` lists what the next requests
    of ``path`` get (``503``, ``404``, ``reset``; ``always-...`` repeats forever)."""

    faults: dict = {}
    hits: dict = {}
    ranges = [True]  # [False]: answer every request with the whole file (no Range support)

    def log_message(self, *args):
        pass

    def _fault(self) -> bool:
        path = self.path.split("?")[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        todo = self.faults.get(path)
        if not todo:
            return False
        what = todo[0]
        if what.startswith("always-"):
            what = what[len("always-"):]
        else:
            todo.pop(0)
        if what == "reset":  # RST instead of a response: SO_LINGER 0, then close
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return True
        self.send_error(int(what))
        return True

    def do_HEAD(self):
        if not self._fault():
            super().do_HEAD()

    def do_GET(self):
        if not self._fault():
            super().do_GET()

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not self.ranges[0] or not Path(path).is_file():
            return super().send_head()
        data = Path(path).read_bytes()
        a, _, b = rng.replace("bytes=", "").partition("-")
        a = int(a)
        b = min(int(b), len(data) - 1) if b else len(data) - 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        self.send_header("Content-Length", str(b - a + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data[a:b + 1])


@pytest.fixture
def server(corpus):
    pytest.importorskip("aiohttp")
    handler_cls = type("Handler", (_FaultyHandler,), {"faults": {}, "hits": {}, "ranges": [True]})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(handler_cls, directory=str(corpus["root"])))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"base": f"http://127.0.0.1:{srv.server_address[1]}", "faults": handler_cls.faults,
               "hits": handler_cls.hits, "ranges": handler_cls.ranges}
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=30)


def _epoch(loader):
    ids = []
    for _ in loader:
        ids += loader.last_ids
    return ids


# ------------------------------------------------------------------------------ remote reads
def test_503s_then_ok_are_retried_and_counted(tmp_path, corpus, server):
    server["faults"]["/shards/shards.json"] = ["503", "503"]
    name = corpus["index"]["shards"][0]["url"]
    server["faults"][f"/shards/{name}"] = ["503"]
    before = remote.retries_done
    cache = FileCache(tmp_path / "cache")
    loader = ShardLoader(ShardStream(f"{server['base']}/shards/shards.json", cache=cache, **CLIP), batch_size=2)
    assert sorted(_epoch(loader)) == list(range(8))
    assert loader.bad == {}
    assert server["hits"]["/shards/shards.json"] == 3  # 2 x 503, then the file
    assert remote.retries_done - before == 3


def test_connection_reset_is_retried(tmp_path, corpus, server):
    name = corpus["index"]["shards"][1]["url"]
    server["faults"][f"/shards/{name}"] = ["reset", "reset"]
    before = remote.retries_done
    with FileCache(tmp_path / "cache").open(f"{server['base']}/shards/{name}") as f:
        assert f.read() == (corpus["shards"] / name).read_bytes()
    # aiohttp itself may retry a dropped idempotent request once; the rest is ours
    assert server["hits"][f"/shards/{name}"] == 3 and remote.retries_done - before >= 1


def test_404_is_missing_and_not_retried(tmp_path, server):
    before = remote.retries_done
    with pytest.raises(RemoteMissing, match="does not exist"):
        FileCache(tmp_path / "cache").open(f"{server['base']}/shards/nothing.tar")
    assert remote.retries_done == before and server["hits"]["/shards/nothing.tar"] == 1


def test_connection_refused_is_unavailable_not_missing(tmp_path):
    import fsspec

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: every connection is refused
    url = f"http://127.0.0.1:{port}/x.tar"
    before = remote.retries_done
    with pytest.raises(RemoteUnavailable, match="still failing after 4 tries") as err:
        with_retries(url, lambda: fsspec.open(url, "rb").open())
    assert not isinstance(err.value, FileNotFoundError)
    assert remote.retries_done - before == 3


@pytest.mark.parametrize("fault,expect", [("always-404", "shard missing"), ("always-503", "shard unreadable")])
def test_remote_shard_lost_loses_only_that_shard(tmp_path, corpus, server, fault, expect):
    entry = corpus["index"]["shards"][2]
    server["faults"][f"/shards/{entry['url']}"] = [fault]
    stream = ShardStream(f"{server['base']}/shards/shards.json", cache=FileCache(tmp_path / "cache"),
                         bad_file_log=tmp_path / "bad.jsonl", **CLIP)
    loader = ShardLoader(stream, batch_size=2)
    served = _epoch(loader)
    lost = set(range(4, 4 + entry["samples"]))  # shards 0-1 hold 2 samples each
    assert set(served) == set(range(8)) - lost and len(served) == 8 - len(lost)
    url = f"{server['base']}/shards/{entry['url']}"
    assert {p: r.split(":")[0] for p, r in loader.bad.items()} == {f"{url}#{i}": expect for i in range(entry["samples"])}
    report = stream.report()
    assert f"{len(lost)} of 8 shard samples unusable" in report and url in report


def test_http_manifest_videos_are_read(tmp_path, corpus, server):
    """A manifest of http(s) video URLs gives the same clips as the local files."""
    from fastlam.data import VideoClipDataset

    urls = [f"{server['base']}/videos/{p.name}" for p in corpus["paths"][:3]]
    build_manifest(urls, tmp_path / "remote.parquet", workers=0, progress=False)
    build_manifest([str(p) for p in corpus["paths"][:3]], tmp_path / "local.parquet", workers=0, progress=False)
    rem = VideoClipDataset(str(tmp_path / "remote.parquet"), seed=3, **CLIP)
    loc = VideoClipDataset(str(tmp_path / "local.parquet"), seed=3, **CLIP)
    assert list(rem.paths) == urls
    for i in range(3):
        assert np.array_equal(rem[i].numpy(), loc[i].numpy())
    assert rem.bad_files == {}


def test_shard_http_videos_without_range_support(tmp_path, corpus, server):
    """Copying remote videos into shards needs no Range support (one GET per video), and a
    503 on one of them is retried: nothing dropped."""
    urls = [f"{server['base']}/videos/{p.name}" for p in corpus["paths"][:4]]
    build_manifest(urls, tmp_path / "remote.parquet", workers=0, progress=False)
    server["ranges"][0] = False
    server["faults"]["/videos/v01.mp4"] = ["503"]
    index = write_shards(tmp_path / "remote.parquet", tmp_path / "out", progress=False)
    assert index["bad"] == [] and index["samples"] == 4
    loader = ShardLoader(ShardStream(str(tmp_path / "out" / "shards.json"), **CLIP), batch_size=2)
    assert sorted(_epoch(loader)) == [0, 1, 2, 3] and loader.bad == {}


def test_folder_over_the_bad_share_names_the_files(tmp_path, corpus):
    from fastlam.data import VideoClipDataset

    folder = tmp_path / "videos"
    folder.mkdir()
    for p in corpus["paths"][:3]:
        shutil.copy(p, folder / p.name)
    (folder / "zz_empty.mp4").write_bytes(b"")
    (folder / "zz_text.mp4").write_text("not a video\n" * 30)
    ok = VideoClipDataset(str(folder), max_bad_fraction=0.4, bad_file_log=tmp_path / "a.jsonl", **CLIP)
    assert len([ok[i] for i in range(len(ok))]) == 5 and len(ok.bad_files) == 2  # 2 of 5: skipped
    strict = VideoClipDataset(str(folder), max_bad_fraction=0.2, bad_file_log=tmp_path / "b.jsonl", **CLIP)
    with pytest.raises(TooManyBadInputs, match="2 of 5 video files") as err:
        [strict[i] for i in range(len(strict))]
    assert "zz_empty.mp4" in str(err.value) and "zz_text.mp4" in str(err.value)


# ------------------------------------------------------------------------------ damaged shards
def _members(tar_path):
    with tarfile.open(tar_path) as t:
        return [(m.name, m.offset_data, m.size) for m in t.getmembers()]


def _damage(folder: Path, how: str) -> tuple[int, set[int]]:
    """Damage shard 1 of the set in ``folder`` (``how``); (its index, the positions lost)."""
    index = json.loads((folder / "shards.json").read_text())
    entry = index["shards"][1]
    tar = folder / entry["url"]
    data = bytearray(tar.read_bytes())
    members = _members(tar)
    if how == "corrupt_json":
        name, off, size = members[2]  # sample 1's JSON member
        assert name.endswith(".json")
        data[off:off + size] = b"\x00{" * (size // 2) + b"x" * (size % 2)
        lost = {1}
    elif how == "video_checksum":
        name, off, size = members[1]  # sample 0's video member: one byte flipped
        data[off + size // 2] ^= 0xFF
        lost = {0}
    elif how == "truncated":
        name, off, size = members[3]  # cut inside sample 1's video member
        data = data[: off + size // 2]
        lost = {1}
    elif how == "zeroed":
        data = bytearray(len(data))
        lost = set(range(entry["samples"]))
    elif how == "missing":
        tar.unlink()
        return 1, set(range(entry["samples"]))
    elif how == "count_mismatch":  # shards.json says one sample more than the tar holds
        entry["samples"] += 1
        (folder / "shards.json").write_text(json.dumps(index))
        return 1, {entry["samples"] - 1}
    tar.write_bytes(bytes(data))
    return 1, lost


@pytest.mark.parametrize("how", ["corrupt_json", "video_checksum", "truncated", "zeroed", "missing",
                                 "count_mismatch"])
def test_damaged_shard_loses_only_its_bad_part(tmp_path, corpus, how):
    folder = tmp_path / "shards"
    shutil.copytree(corpus["shards"], folder)
    shard, lost = _damage(folder, how)
    stream = ShardStream(str(folder / "shards.json"), bad_file_log=tmp_path / "bad.jsonl", **CLIP)
    loader = ShardLoader(stream, batch_size=1)
    served = _epoch(loader)
    first = int(stream.offsets[shard])
    lost_ids = {first + p for p in lost}
    assert sorted(served) == sorted(set(range(stream.n)) - lost_ids)
    url = stream.urls[shard]
    assert set(loader.bad) == {f"{url}#{p}" for p in lost}
    report = stream.report()
    assert f"{len(lost)} of {stream.n} shard samples unusable" in report and url in report
    if how in ("corrupt_json", "video_checksum", "truncated", "zeroed", "count_mismatch"):
        assert "damaged" in report  # the shard itself is named with what is wrong with it
    if how == "video_checksum":
        assert "sha256 differs" in report
    # The record is shared: a fresh stream over the same log (another process) sees it all.
    other = ShardStream(str(folder / "shards.json"), bad_file_log=tmp_path / "bad.jsonl", **CLIP)
    assert other.bad_files == loader.bad


def test_brace_pattern_with_a_missing_tar_names_it(tmp_path, corpus):
    """Without shards.json the counts come from the tars: a missing one cannot be counted, so
    its samples are not in the epoch, and the report says so."""
    folder = tmp_path / "shards"
    shutil.copytree(corpus["shards"], folder)
    names = [s["url"] for s in corpus["index"]["shards"]]
    (folder / names[1]).unlink()
    stream = ShardStream(str(folder / f"shard-{{000000..{len(names) - 1:06d}}}.tar"), **CLIP)
    lost = corpus["index"]["shards"][1]["samples"]
    assert stream.n == 8 - lost
    assert sorted(_epoch(ShardLoader(stream, batch_size=1))) == list(range(8 - lost))
    assert f"{folder / names[1]}: FileNotFoundError" in stream.report()


def test_over_the_bad_share_is_a_clear_error(tmp_path, corpus):
    folder = tmp_path / "shards"
    shutil.copytree(corpus["shards"], folder)
    _damage(folder, "zeroed")
    stream = ShardStream(str(folder / "shards.json"), max_bad_fraction=0.1, **CLIP)
    with pytest.raises(TooManyBadInputs, match=r"of 8 shard samples of the epoch are bad") as err:
        _epoch(ShardLoader(stream, batch_size=1))
    assert stream.urls[1] in str(err.value) and "max_bad_fraction=0.1" in str(err.value)


# ------------------------------------------------------------------------------ writing shards
class _Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing in the writer catches it."""


def _kill_at(monkeypatch, job: int):
    real = shard_writer._sample

    def sample(j):
        if j[0] == job:
            raise _Killed
        return real(j)

    monkeypatch.setattr(shard_writer, "_sample", sample)


def _shas(folder):
    return [s["sha256"] for s in json.loads((folder / "shards.json").read_text())["shards"]]


def test_shard_killed_mid_write_leaves_the_old_set(tmp_path, corpus, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(corpus["shards"], out)
    old_index = (out / "shards.json").read_bytes()
    with pytest.raises(ShardFolderError, match="pass --resume .* or --overwrite"):
        write_shards(corpus["manifest"], out, shard_bytes=1, progress=False, seed=2)
    with monkeypatch.context() as m, pytest.raises(_Killed):
        _kill_at(m, 5)  # one sample per shard: shards 0-3 closed, the 5th half written
        write_shards(corpus["manifest"], out, shard_bytes=1, progress=False, seed=2, overwrite=True)
    assert (out / "shards.json").read_bytes() == old_index
    stream = ShardStream(str(out / "shards.json"), **CLIP)
    loader = ShardLoader(stream, batch_size=2)
    assert sorted(_epoch(loader)) == list(range(8)) and loader.bad == {}
    # --overwrite publishes the new set, then deletes the old set's tars
    index = write_shards(corpus["manifest"], out, shard_bytes=1, progress=False, seed=2, overwrite=True)
    assert len(index["shards"]) == 8 and index["replaced"] == len(corpus["index"]["shards"])
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == sorted(s["url"] for s in index["shards"]) and not list(out.glob(".*"))
    assert sorted(_epoch(ShardLoader(ShardStream(str(out / "shards.json"), **CLIP), batch_size=2))) == list(range(8))


def test_shard_resume_continues_an_interrupted_write(tmp_path, corpus, monkeypatch):
    full = write_shards(corpus["manifest"], tmp_path / "full", shard_bytes=1, progress=False, seed=2)
    with monkeypatch.context() as m, pytest.raises(_Killed):
        _kill_at(m, 3)
        write_shards(corpus["manifest"], tmp_path / "part", shard_bytes=1, progress=False, seed=2)
    assert not (tmp_path / "part" / "shards.json").exists()
    with pytest.raises(ShardFolderError, match="interrupted write"):
        write_shards(corpus["manifest"], tmp_path / "part", shard_bytes=1, progress=False, seed=2)
    with pytest.raises(ShardFolderError, match="other settings"):
        write_shards(corpus["manifest"], tmp_path / "part", shard_bytes=1, progress=False, seed=3, resume=True)
    done = write_shards(corpus["manifest"], tmp_path / "part", shard_bytes=1, progress=False, seed=2, resume=True)
    assert done["shards"] == full["shards"] and _shas(tmp_path / "part") == _shas(tmp_path / "full")
    with pytest.raises(ShardFolderError, match="no interrupted write"):
        write_shards(corpus["manifest"], tmp_path / "part", shard_bytes=1, progress=False, seed=2, resume=True)


_SIGKILL_AT = """
import os, signal, sys
from fastlam.data import shard_writer
real = shard_writer._sample
def sample(job):
    if job[0] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: a real kill
    return real(job)
shard_writer._sample = sample
shard_writer.write_shards(sys.argv[1], sys.argv[2], shard_bytes=1, progress=False, seed=2,
                          overwrite=True)
"""


def test_shard_sigkilled_mid_write_leaves_the_old_set(tmp_path, corpus):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    shutil.copytree(corpus["shards"], out)
    old_index = (out / "shards.json").read_bytes()
    old_tars = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    proc = subprocess.run([sys.executable, "-c", _SIGKILL_AT, str(corpus["manifest"]), str(out), "4"],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "shards.json").read_bytes() == old_index
    assert {p.name: p.read_bytes() for p in out.glob("*.tar") if p.name in old_tars} == old_tars
    # The new set: 3 finished tars (one per sample; a tar is closed when the next sample comes)
    # and the 4th half written under its temporary name, none of them published.
    assert len(list(out.glob("shard-g1-*.tar"))) == 3 and len(list(out.glob(".shard-g1-*.part"))) == 1
    loader = ShardLoader(ShardStream(str(out / "shards.json"), **CLIP), batch_size=2)
    assert sorted(_epoch(loader)) == list(range(8)) and loader.bad == {}


def _samples(folder):
    out = []
    for s in json.loads((folder / "shards.json").read_text())["shards"]:
        with tarfile.open(folder / s["url"]) as t:
            out += [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    return out


def test_copy_is_reproducible_and_reencoding_keeps_the_samples(tmp_path, corpus):
    """Copying twice: the same bytes. Re-encoding twice: the same samples in the same shards
    with the same metadata, each video matching its own sha256 (not always the same bytes:
    see fastlam.data.shard_writer's docstring)."""
    a = write_shards(corpus["manifest"], tmp_path / "a", shard_bytes=1, progress=False)
    b = write_shards(corpus["manifest"], tmp_path / "b", shard_bytes=1, progress=False)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    kw = dict(fps=4.0, short_side=24, shard_bytes=1 << 20, progress=False, seed=0)
    a = write_shards(corpus["manifest"], tmp_path / "ra", **kw)
    b = write_shards(corpus["manifest"], tmp_path / "rb", **kw)
    assert a["samples"] == b["samples"] == 8 and [s["samples"] for s in a["shards"]] == [s["samples"] for s in b["shards"]]
    sa, sb = _samples(tmp_path / "ra"), _samples(tmp_path / "rb")
    assert [n for n, _ in sa] == [n for n, _ in sb]
    for (name, ja), (_, jb) in zip(sa[0::2], sb[0::2]):
        ma, mb = json.loads(ja), json.loads(jb)
        ma.pop("sha256"), mb.pop("sha256")
        assert ma == mb, name
    for (_, j), (_, video) in zip(sa[0::2], sa[1::2]):
        assert hashlib.sha256(video).hexdigest() == json.loads(j)["sha256"]


def test_shard_cli_prints_what_it_dropped(tmp_path, corpus, capsys):
    vids = tmp_path / "videos"
    shutil.copytree(corpus["videos"], vids)
    build_manifest([vids], tmp_path / "m.parquet", workers=0, progress=False)
    broken = vids / "v03.mp4"
    broken.write_bytes(broken.read_bytes()[:200])  # went bad after indexing
    out = tmp_path / "out"
    args = ["shard", str(tmp_path / "m.parquet"), "--out", str(out), "--fps", "4", "--quiet"]
    assert data_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert f"dropped: {broken}: " in printed and "7 samples in 1 shards" in printed
    assert "1 video(s) dropped" in printed
    assert data_cli.main(args) == 2  # the folder holds a set now: refused without a flag
    assert "pass --resume" in capsys.readouterr().err


# ------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_train_on_http_manifest_reports_a_404(tmp_path, corpus, server):
    from fastlam.config import load_config
    from fastlam.train import TrainConfig, train

    urls = [f"{server['base']}/videos/{p.name}" for p in corpus["paths"][:6]]
    build_manifest(urls, tmp_path / "remote.parquet", workers=0, progress=False)
    gone = urls[2]
    server["faults"][gone[len(server["base"]):]] = ["always-404"]  # removed after indexing
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", [
        f"data.source={tmp_path / 'remote.parquet'}", "model.image_size=32", "model.frames=8",
        "model.encoder.patch_size=8", "model.idm.width=32", "model.predictor.width=32", "batch_size=2",
        "progress=false", "log_every=1", "steps=3", "ckpt_every=100", "diagnostics_clips=0",
        f"out_dir={tmp_path / 'run'}"])
    summary = train(cfg)  # 3 steps x 2 clips: the whole epoch of 6 videos, the 404 one included
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and saved["bad_inputs"] == 1  # skipped, named, counted
    assert f"{gone}: file does not exist" in saved["data_report"] and rows[-1]["bad_files"] == 1


@pytest.mark.slow
def test_train_on_shards_reports_a_damaged_member(tmp_path, corpus):
    """A corrupt sample in a shard: training goes on, and metrics.jsonl and summary.json count
    and name it (ShardLoader's bad samples were once never read)."""
    from fastlam.config import load_config
    from fastlam.train import TrainConfig, train

    folder = tmp_path / "shards"
    shutil.copytree(corpus["shards"], folder)
    _damage(folder, "video_checksum")
    url = str(folder / json.loads((folder / "shards.json").read_text())["shards"][1]["url"])
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", [
        f"data.source={folder / 'shards.json'}", "data.shuffle_buffer=2", "model.image_size=32",
        "model.frames=8", "model.encoder.patch_size=8", "model.idm.width=32", "model.predictor.width=32",
        "batch_size=2", "progress=false", "log_every=1", "steps=4", "ckpt_every=100",
        "diagnostics_clips=0", f"out_dir={tmp_path / 'run'}"])
    train(cfg)  # 4 steps of 2: past the end of epoch 0 (7 good clips), so every sample was met
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4] and rows[-1]["bad_files"] == 1
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["bad_inputs"] == 1
    assert f"{url}: 1 sample(s)" in saved["data_report"] and "sha256 differs" in saved["data_report"]
