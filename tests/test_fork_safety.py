"""Reads in processes forked after a short clip: a regression test for a deadlock.

A ``ClipTooShort`` kept alive after ``VideoClipDataset._try_read`` returned (its traceback
holds a reference cycle with the read's frame, the PyAV stream and its codec context, whose
FFmpeg decoder threads are still running) was finalised by the garbage collector of a process
forked later. There FFmpeg joins threads that fork did not copy and waits forever: every good
file read in a watchdog child came back as "decoder hung", and DataLoader workers stalled.

Each read here is bounded (the watchdog's and the DataLoader's own timeouts), so a regression
fails within a few minutes instead of hanging the suite.
"""
import gc
import weakref

import numpy as np
import pytest
import torch

from fastlam.data import VideoClipDataset
from fastlam.data.watchdog import GuardedClipDataset, Watchdog

av = pytest.importorskip("av")
from video_files import encode_video  # noqa: E402

# A good 8-frame read takes ~0.1 s: only a deadlock (the regression) ever waits this long, so it
# can be far above what any load makes of a good read.
TIMEOUT_S = 120.0


def _write(path, n, size=(240, 320)):
    # Large enough frames that FFmpeg's h264 decoder starts its worker threads; smooth
    # content and the fastest preset keep the encoding cheap.
    ramp = np.linspace(0, 255, size[1], dtype=np.uint8)[None, :, None]
    frames = [np.broadcast_to((ramp + 8 * i).astype(np.uint8), (size[0], size[1], 3)) for i in range(n)]
    return str(encode_video(path, frames, options={"preset": "ultrafast"}))


@pytest.fixture(scope="module")
def video_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("fork_safety")
    # A clip is 8 frames at 25 fps: the first file has 3, the others enough.
    return [_write(d / "a_short.mp4", 3)] + [_write(d / f"good{i}.mp4", 12) for i in range(3)]


@pytest.fixture
def short_then_good(video_paths):
    ds = VideoClipDataset(video_paths, num_frames=8, fps=25, size=(32, 32), decode_timeout_s=None)
    gc.collect()  # nothing left over from earlier tests: only the short read below counts
    # The short clip is read in the parent (padded): the state every later fork inherits. No
    # automatic collection in the parent may free what that read left behind before the forks
    # (it happens or not by allocation counts); each child below collects explicitly instead,
    # as it eventually does on its own.
    gc.disable()
    try:
        assert ds[0].shape == (3, 8, 32, 32) and ds._padded
        yield ds
    finally:
        gc.enable()


def test_watchdog_children_forked_after_a_short_clip_read_good_files(short_then_good):
    ds = short_then_good
    guarded = GuardedClipDataset(ds, timeout_s=TIMEOUT_S)
    for i in range(1, len(ds)):
        guarded._watchdog = Watchdog(TIMEOUT_S, state=ds)  # a fresh child, forked from the parent now
        guarded._watchdog.call(gc.collect, what="gc.collect in the child")
        assert guarded[i].shape == (3, 8, 32, 32)
    assert guarded.timeouts == 0 and not ds.bad_files, ds.report()


def _collect(worker_id):
    gc.collect()


def test_dataloader_workers_forked_after_a_short_clip(short_then_good):
    ds = short_then_good
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, timeout=TIMEOUT_S,
                                         multiprocessing_context="fork", worker_init_fn=_collect)
    batches = list(loader)  # a worker that hangs raises after TIMEOUT_S
    assert len(batches) == len(ds) and not ds.bad_files


def test_watchdog_collects_before_forking_and_the_child_freezes_what_it_inherited():
    # Cyclic garbage a caller leaves behind is collected in the parent, where its finalisers
    # are safe, before each fork; the child freezes what it inherited, so a cycle created
    # between the collection and the fork is never finalised there either.
    class Cycle:
        pass

    a = Cycle()
    a.self = a
    ref = weakref.ref(a)
    del a
    w = Watchdog(TIMEOUT_S)
    gc.disable()
    try:
        assert ref() is not None  # only a collection frees a cycle
        assert w.call(gc.get_freeze_count) > 0
        assert ref() is None
    finally:
        gc.enable()
        w.close()


class _Holder:
    pass


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor(i)


def test_dataloader_workers_forked_beside_an_orphaned_decoder(video_paths):
    """A PyAV container mid-decode (FFmpeg threads running) left in an unreachable reference
    cycle, e.g. by an earlier test's captured exception: a DataLoader worker forked now must
    not finalise it (fastlam.data.decoding collects before every fork and freezes the child)."""
    import fastlam.data.decoding  # noqa: F401  (the fork hooks come with fastlam.data)

    container = av.open(video_paths[1])
    frames = container.decode(video=0)
    next(frames)  # the decoder's threads are running now
    cycle = _Holder()
    cycle.container, cycle.frames, cycle.self = container, frames, cycle
    ref = weakref.ref(cycle)
    del container, frames, cycle
    gc.disable()  # only an explicit collection may free the cycle: here, or in the child
    try:
        loader = torch.utils.data.DataLoader(_Items(), batch_size=1, num_workers=1, timeout=TIMEOUT_S,
                                             multiprocessing_context="fork", worker_init_fn=_collect)
        assert [int(b) for b in loader] == [0, 1]  # a hung worker raises after TIMEOUT_S
    finally:
        gc.enable()
    assert ref() is None  # collected in the parent, before the fork
