"""A spy on the attention forward kernel's launches, for the tests that check which tile a
forward launches (forced tiles, tuned tiles): it records each launch's (BLOCK_M, BLOCK_N) and
runs the real kernel, so the outputs can still be compared."""
from __future__ import annotations


def spy_forward_tiles(kernels_module, monkeypatch) -> list[tuple[int, int]]:
    """Replace ``kernels_module.attn_fwd`` for this test; returns the list the launches'
    (BLOCK_M, BLOCK_N) are appended to, in launch order."""
    seen: list[tuple[int, int]] = []
    real = kernels_module.attn_fwd

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append((kw["BLOCK_M"], kw["BLOCK_N"]))
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(kernels_module, "attn_fwd", Spy())
    return seen
