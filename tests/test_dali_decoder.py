"""The DALI loader's pipelined decoding without DALI: DaliDecoder's protocol and the loader's
orchestration (cuts in worker threads, batches queued in DALI, order, errors, resume) driven
by a stand-in pipeline that follows the rules of DALI's scheduled API (read from DALI's
``pipeline.py``: a pipelined pipeline's first ``schedule_run`` runs ``prefetch_queue_depth``
iterations, each consuming one fed batch per external source; later ones run one; outputs come
out first in, first out; a shared buffer is released before the next is shared). The stand-in
decodes with PyAV and resizes with torch, so only the pixels DALI itself makes are not checked
here (the ``needs_dali`` tests in test_data_pipeline.py do that where DALI is installed)."""
import io
import threading

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from fastlam.data import dali as D  # noqa: E402
from fastlam.data.dali_decoder import INPUT_NAMES, DaliDecoder  # noqa: E402
from fastlam.data.video_index import cut_stream  # noqa: E402
from video_files import encode_video  # noqa: E402

MARK = 8  # frame i shows grey level MARK * i in its top half


class FakeDali:
    """A stand-in for a built DALI pipeline (the operations of dali_decoder.build_pipeline)."""

    def __init__(self, depth: int, size, fail_at: int | None = None):
        self.depth, self.size, self.fail_at = depth, tuple(size), fail_at
        self.fed = {name: [] for name in INPUT_NAMES}
        self.done: list = []  # outputs of iterations run, oldest first
        self.first = True
        self.shared = False
        self.iterations = 0
        self.most_ready = 0  # the most iterations run ahead of the consumer at once
        self.feed_threads: set = set()

    def feed_input(self, name, data):
        self.fed[name].append(data)
        self.feed_threads.add(threading.current_thread().name)

    def _run_one(self):
        if any(not q for q in self.fed.values()):
            raise AssertionError("DALI would run an iteration with no input fed")
        batch = {name: q.pop(0) for name, q in self.fed.items()}
        self.iterations += 1
        if self.fail_at is not None and self.iterations == self.fail_at:
            self.done.append(RuntimeError("stand-in decoder error"))
            return
        clips = []
        for enc, frames, resized, anchor in zip(*(batch[n] for n in INPUT_NAMES)):
            with av.open(io.BytesIO(enc.tobytes())) as c:
                all_frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
            x = torch.from_numpy(all_frames[frames]).permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=tuple(int(v) for v in resized), mode="bilinear",
                                                antialias=True, align_corners=False)
            top, left = int(anchor[0]), int(anchor[1])
            x = x[:, :, top:top + self.size[0], left:left + self.size[1]]
            clips.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        self.done.append(np.stack(clips))

    def schedule_run(self):
        for _ in range(self.depth if self.first else 1):
            self._run_one()
        self.first = False
        self.most_ready = max(self.most_ready, len(self.done))

    def share_outputs(self):
        assert not self.shared, "share_outputs twice without release_outputs"
        if not self.done:
            raise StopIteration
        out = self.done.pop(0)
        if isinstance(out, Exception):
            raise out
        self.shared = True
        return (type("Out", (), {"as_tensor": lambda self, a=out: a})(),)

    def release_outputs(self):
        self.shared = False


def _marked(i, size=64):
    img = np.zeros((size, size, 3), np.uint8)
    img[: size // 2] = MARK * i
    img[size // 2:, (3 * i) % size, 1] = 255
    return img


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("dali_decoder")
    out = []
    for k, (codec, suffix, pix) in enumerate([("libvpx-vp9", ".webm", "yuv420p"), ("mjpeg", ".avi", "yuvj420p"),
                                              ("libx264", ".mp4", "yuv420p"), ("libvpx", ".webm", "yuv420p")]):
        out.append(str(encode_video(d / f"v{k}{suffix}", [_marked(i) for i in range(30)], codec=codec, rate=25,
                                    pix_fmt=pix)))
    return out


def _marks(batch: torch.Tensor) -> list:
    """Frame numbers of a (B, 3, F, H, W) [0, 1] batch, per clip."""
    top = batch[:, :, :, 4: batch.shape[3] // 2 - 4].mean(dim=(1, 3, 4)) * 255
    return (top / MARK).round().int().tolist()


def test_decoder_primes_the_prefetch_and_keeps_order(videos):
    from fastlam.data.video_index import index_video

    idx = index_video(videos[0])
    pipes = []

    def batch(first):
        frames = np.array([first, first + 2], np.int32)
        enc, local = cut_stream(idx, frames)
        return [local], [enc], [(64, 64)], [(0, 0)]

    for depth in (1, 3):
        pipe = FakeDali(depth, (64, 64))
        pipes.append(pipe)
        dec = DaliDecoder(4, (64, 64), "cpu", None, 1, depth, pipe=pipe)
        dec.submit(*batch(3))  # one batch, depth 3: fed twice more, those outputs dropped
        got = dec.collect()
        assert got.shape == (1, 2, 64, 64, 3) and dec.padding == depth - 1
        for first in (5, 7, 9, 11, 13):
            dec.submit(*batch(first))
        assert dec.pending == 5
        firsts = []
        for _ in range(5):
            clip = dec.collect()[0]
            firsts.append(int(round(float(clip[0, 4:28].float().mean()) / MARK)))
        assert firsts == [5, 7, 9, 11, 13]
        assert dec.pending == 0
        with pytest.raises(RuntimeError, match="without a submitted batch"):
            dec.collect()


def _loader(videos, monkeypatch, *, fail_at=None, pipes=None, **kw):
    monkeypatch.setattr(D, "dali_available", lambda: True)
    made = pipes if pipes is not None else []

    def decoder(max_batch, size, device, device_id, num_threads, depth):
        made.append(FakeDali(depth, size, fail_at=fail_at if not made else None))
        return DaliDecoder(max_batch, size, device, device_id, num_threads, depth, pipe=made[-1])

    monkeypatch.setattr(D, "DaliDecoder", decoder)
    args = dict(batch_size=2, num_frames=4, fps=4.0, size=(48, 48), crop="center", seed=1, clips_per_video=3,
                device="cpu", prefetch=3, cut_workers=2)
    args.update(kw)
    return D.DaliVideoLoader(videos, **args)


def test_loader_queues_batches_in_dali_cuts_off_thread_and_matches_pyav(videos, monkeypatch):
    cut_threads = set()

    def recording_cut(idx, frames):
        cut_threads.add(threading.current_thread().name)
        return cut_stream(idx, frames)

    monkeypatch.setattr(D, "cut_stream", recording_cut)
    pipes: list = []
    loader = _loader(videos, monkeypatch, pipes=pipes)
    got = list(loader)
    reference = list(D.DaliVideoLoader(videos, batch_size=2, num_frames=4, fps=4.0, size=(48, 48), crop="center",
                                       seed=1, clips_per_video=3, device="cpu", backend="pyav"))
    assert len(got) == len(reference) == 6
    assert [_marks(b) for b in got] == [_marks(b) for b in reference]
    # VP8 / VP9 / MJPEG go to "DALI" on the CPU, H.264 to PyAV; 12 clips in all.
    assert loader.counts["dali"] == 9 and loader.counts["pyav"] == 3 and loader.counts["dali_errors"] == 0
    assert cut_threads and all(n.startswith("fastlam-clip-cut") for n in cut_threads)
    assert len(pipes) == 1 and pipes[0].feed_threads == {"fastlam-video-loader"}
    # Batches were queued in "DALI" `prefetch` (3) deep before the oldest was collected.
    assert pipes[0].most_ready == 3


def test_loader_survives_a_dali_error_with_pyav(videos, monkeypatch):
    pipes: list = []
    loader = _loader(videos, monkeypatch, fail_at=2, pipes=pipes)
    got = list(loader)
    reference = list(D.DaliVideoLoader(videos, batch_size=2, num_frames=4, fps=4.0, size=(48, 48), crop="center",
                                       seed=1, clips_per_video=3, device="cpu", backend="pyav"))
    assert [_marks(b) for b in got] == [_marks(b) for b in reference]
    assert loader.counts["dali_errors"] == 1
    assert len(pipes) == 2  # a new pipeline took the batches after the error
    # The failed batch and those queued behind it were decoded by PyAV: every clip once.
    assert loader.counts["dali"] + loader.counts["pyav"] == 12 and loader.counts["dali"] < 9


def test_loader_resumes_mid_epoch_with_batches_queued(videos, monkeypatch):
    whole = list(_loader(videos, monkeypatch))
    first = _loader(videos, monkeypatch)
    it = iter(first)
    head = [next(it), next(it)]
    state = first.state_dict()
    it.close()  # batches queued in DALI but never handed out are drawn again after a resume
    assert state["sampler"]["consumed"] == 4
    again = _loader(videos, monkeypatch)
    again.load_state_dict(state)
    rest = list(again)
    assert [_marks(b) for b in head + rest] == [_marks(b) for b in whole]


def test_loader_interleaves_pyav_only_batches_in_order(videos, monkeypatch):
    """Batches of one clip, half of them H.264 (PyAV on the CPU): a PyAV batch waiting behind
    DALI batches, and DALI batches collected before the prefetch was full (padding), keep the
    sampler's order."""
    pipes: list = []
    two = [videos[0], videos[2]]
    # Seed 5's order: DALI, PyAV, DALI, PyAV, PyAV, DALI, PyAV, DALI.
    loader = _loader(two, monkeypatch, pipes=pipes, batch_size=1, clips_per_video=4, prefetch=3, seed=5)
    got = list(loader)
    reference = list(D.DaliVideoLoader(two, batch_size=1, num_frames=4, fps=4.0, size=(48, 48), crop="center",
                                       seed=5, clips_per_video=4, device="cpu", backend="pyav"))
    assert len(got) == 8 and [_marks(b) for b in got] == [_marks(b) for b in reference]
    assert loader.counts["dali"] == 4 and loader.counts["pyav"] == 4
    # The first DALI batch was wanted before the prefetch was full: fed again twice (dropped).
    assert len(pipes) == 1 and pipes[0].iterations == 4 + 2
