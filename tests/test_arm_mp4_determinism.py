"""`python -m fastlam.eval generate arm` (and `pybullet-arm`) writes the same mp4 bytes on every run.

The LAM trains on these files, so bytes that depend on thread timing moved the documented
planning figures between identical runs. x264 with automatic threading (one thread per core,
or slice threads) is the source; the encoder runs single-threaded. Where the machine has only
a core or two x264 picks one thread by itself, so the second assertion also reads the
settings x264 records in the stream: ``threads=1`` whatever the machine. The pybullet arm
renders through the same writer, and its inverse kinematics and TinyRenderer frames must not
vary between runs either (~2 s with pybullet, a dev dependency; skipped without it).
"""
import re

import pytest

from fastlam.eval import action_data as ad

pytest.importorskip("av")


def _pybullet_arm(root, **kw):
    pytest.importorskip("pybullet")
    from fastlam.eval.pybullet_arm import generate_pybullet_arm

    return generate_pybullet_arm(root, **kw)


@pytest.mark.parametrize("generate", [ad.generate_arm, _pybullet_arm], ids=["arm", "pybullet-arm"])
def test_generate_arm_mp4s_are_byte_identical_and_single_threaded(tmp_path, generate):
    runs = [generate(tmp_path / name, episodes=3, steps=6, size=64, seed=5) for name in ("a", "b")]
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*.mp4"))
    assert len(files) == 3
    for rel in files:
        data = (runs[0] / rel).read_bytes()
        assert data == (runs[1] / rel).read_bytes(), rel
        settings = re.search(rb"threads=(\d+) lookahead_threads=(\d+) sliced_threads=(\d+)", data)
        assert settings is not None and settings.groups() == (b"1", b"1", b"0"), (rel, settings)
