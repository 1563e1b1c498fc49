"""Peers' attention checkpoints through fastlam and back, and the README's swap glue, in float64.

Small copies of the peers' module layouts (``tests/peer_attention.py``): UniVLA's LAM
(``to_q/to_k/to_v/to_out.0``, half of each head rotated), 1xgpt's ST blocks (``qkv/proj`` and one
shared qk LayerNorm ``norm``), V-JEPA 2-AC's predictor (``ACRoPEAttention`` in ``ACBlock``, which
passes the grid only to that class) and V-JEPA 2's ``CrossAttention`` (``q``, ``kv``, no output
projection). Each README glue block is run as written and its lines counted.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fastlam.nn import STAttention, from_peer_attention_state_dict, to_peer_attention_state_dict
from peer_attention import ACBlock, ACRoPEAttention, PartialRotaryAttention, QKVCrossAttention, SharedNormAttention, \
    STBlock

D64 = torch.float64
README = Path(__file__).resolve().parents[1] / "README.md"
GLUE_LIMITS = {"univla": 15, "vjepa2_ac": 8, "1xgpt": 6}  # issue 27's targets


def glue_block(name: str) -> str:
    """The python block that follows ``<!-- glue: name -->`` in the README."""
    match = re.search(rf"<!-- glue: {re.escape(name)} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no glue block {name!r}"
    return match.group(1)


def glue_lines(code: str) -> int:
    """Non-blank, non-comment source lines."""
    return sum(1 for line in code.splitlines() if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("name", list(GLUE_LIMITS))
def test_glue_line_counts(name):
    n = glue_lines(glue_block(name))
    assert 0 < n <= GLUE_LIMITS[name], f"{name}: {n} lines of glue"
    assert f"{n} <= {GLUE_LIMITS[name]}" in " ".join(README.read_text().split()), "README states another count"


class Model(nn.Module):
    def __init__(self, make_block, n=2):
        super().__init__()
        self.blocks = nn.ModuleList(make_block() for _ in range(n))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _same_outputs_and_grads(peer, swapped, x):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = peer(xa), swapped(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-11, atol=1e-11)


def test_univla_glue_and_checkpoint_back(tmp_path):
    torch.manual_seed(0)
    dim, heads = 32, 2
    peer = Model(lambda: STBlock(dim, lambda: PartialRotaryAttention(dim, heads))).to(D64)
    lam = copy.deepcopy(peer)
    path = tmp_path / "lam.pt"
    exec(glue_block("univla"), {"lam": lam, "path": path, "torch": torch})
    assert all(isinstance(b.spatial_attn, STAttention) and isinstance(b.temporal_attn, STAttention) for b in lam.blocks)
    x = torch.randn(2, 3, 5, dim, dtype=D64)  # (B, T, S, E)
    _same_outputs_and_grads(peer, lam, x)
    fresh = Model(lambda: STBlock(dim, lambda: PartialRotaryAttention(dim, heads))).to(D64)
    fresh.load_state_dict(torch.load(path), strict=True)
    torch.testing.assert_close(fresh(x), peer(x), rtol=0, atol=0)
    # and the other way, as a dict: the peer's checkpoint in fastlam's layout equals fastlam's own
    back = from_peer_attention_state_dict(lam, torch.load(path))
    assert back.keys() == lam.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in lam.state_dict().items())


def test_1xgpt_glue_checkpoint_is_the_peers():
    torch.manual_seed(1)
    dim, heads = 32, 4
    peer = Model(lambda: STBlock(dim, lambda: SharedNormAttention(heads, dim))).to(D64)
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, SharedNormAttention):
                m.norm.weight.uniform_(0.5, 1.5)
                m.norm.bias.uniform_(-0.3, 0.3)
    model = copy.deepcopy(peer)
    exec(glue_block("1xgpt"), {"model": model})
    attn = model.blocks[0].spatial_attn
    assert attn.shared_qk_norm and {"norm.weight", "norm.bias"} <= set(attn.state_dict())
    assert not any("q_norm" in k or "k_norm" in k for k in model.state_dict())
    x = torch.randn(2, 3, 4, dim, dtype=D64)
    _same_outputs_and_grads(peer, model, x)
    fresh = Model(lambda: STBlock(dim, lambda: SharedNormAttention(heads, dim))).to(D64)
    fresh.load_state_dict(to_peer_attention_state_dict(model, "1xgpt"), strict=True)
    torch.testing.assert_close(fresh(x), peer(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shares one"):
        to_peer_attention_state_dict(STAttention(dim, heads, qk_norm=True), "1xgpt")


class Predictor(nn.Module):
    def __init__(self, dim, heads, n=2):
        super().__init__()
        self.predictor_blocks = nn.ModuleList(ACBlock(dim, heads, grid_size=16) for _ in range(n))

    def forward(self, x, T, H, W, action_tokens):
        F_ = action_tokens + H * W
        frames = torch.arange(T * F_) // F_
        attn_mask = frames[:, None] >= frames[None, :]
        for block in self.predictor_blocks:
            x = block(x, attn_mask=attn_mask, T=T, H=H, W=W, action_tokens=action_tokens)
        return x


@pytest.mark.parametrize("T,H,W,action_tokens", [(2, 4, 6, 1), (3, 2, 3, 2)])  # non-square grids
def test_vjepa2_ac_glue_layout_per_call(T, H, W, action_tokens):
    torch.manual_seed(2)
    dim, heads = 36, 2  # head_dim 18: three 6-channel chunks
    peer = Predictor(dim, heads).to(D64)
    predictor = copy.deepcopy(peer)
    exec(glue_block("vjepa2_ac"), {"predictor": predictor, "ACRoPEAttention": ACRoPEAttention})
    assert all(isinstance(b.attn, STAttention) for b in predictor.predictor_blocks)
    x = torch.randn(2, T * (action_tokens + H * W), dim, dtype=D64)
    _same_outputs_and_grads(lambda z: peer(z, T, H, W, action_tokens), lambda z: predictor(z, T, H, W, action_tokens),
                            x)
    # One swapped module serves every grid (no layout fixed at construction).
    other = torch.randn(1, 2 * (1 + 3 * 5), dim, dtype=D64)
    torch.testing.assert_close(predictor(other, 2, 3, 5, 1), peer(other, 2, 3, 5, 1), rtol=1e-12, atol=1e-12)
    fresh = Predictor(dim, heads).to(D64)
    fresh.load_state_dict(to_peer_attention_state_dict(predictor, "vjepa2"), strict=True)
    torch.testing.assert_close(fresh(x, T, H, W, action_tokens), peer(x, T, H, W, action_tokens), rtol=0, atol=0)


def test_grid_attention_refuses_another_attn_mask():
    from fastlam.nn import GridAttention

    m = GridAttention(36, 2).to(D64)
    x = torch.randn(1, 2 * 4, 36, dtype=D64)
    with pytest.raises(ValueError, match="frame-causal"):
        m(x, attn_mask=torch.ones(8, 8, dtype=torch.bool), T=2, H=2, W=2)
    with pytest.raises(ValueError, match="grid per call"):
        m(x)
    with pytest.raises(ValueError, match="kept-token ids"):
        m(x, mask=torch.arange(8)[None], T=2, H=2, W=2)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_vjepa2_cross_attention_weights_both_ways(qkv_bias):
    torch.manual_seed(3)
    peer = QKVCrossAttention(32, 4, qkv_bias=qkv_bias).to(D64)
    ours = STAttention(32, 4, qkv_bias=qkv_bias, out_proj=False).to(D64)
    ours.load_state_dict(peer.state_dict(), strict=True)
    assert torch.equal(STAttention.from_peer(peer).qkv.weight, ours.qkv.weight)
    queries, ctx = torch.randn(2, 3, 32, dtype=D64), torch.randn(2, 7, 32, dtype=D64)
    got = ours(queries, kv=ctx, frame_len=3, mask="full")
    torch.testing.assert_close(got, peer(queries, ctx), rtol=1e-13, atol=1e-13)
    fresh = QKVCrossAttention(32, 4, qkv_bias=qkv_bias).to(D64)
    fresh.load_state_dict(to_peer_attention_state_dict(ours, "vjepa2"), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), peer.state_dict().values()))
    # a peer output projection has nowhere to go in a module without one
    sd = dict(peer.state_dict(), **{"to_out.0.weight": torch.zeros(32, 32, dtype=D64)})
    with pytest.raises(RuntimeError, match="out_proj=False"):
        ours.load_state_dict(sd)


def test_univla_converter_refuses_a_bias_the_peer_cannot_hold():
    m = STAttention(16, 2).to(D64)  # biased qkv, UniVLA's to_q/to_k/to_v have none
    with torch.no_grad():
        m.qkv.bias.zero_()
    sd = to_peer_attention_state_dict(m, "univla")
    assert {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"} == set(sd)
    with torch.no_grad():
        m.qkv.bias[3] = 0.5
    with pytest.raises(ValueError, match="qkv.bias: non-zero"):
        to_peer_attention_state_dict(m, "univla")
    assert "to_q.bias" in to_peer_attention_state_dict(m, "univla", qkv_bias=True)
    with pytest.raises(ValueError, match="peer"):
        to_peer_attention_state_dict(m, "genie")


def test_from_peer_keeps_the_peers_norm_eps():
    peer = SharedNormAttention(2, 16).to(D64)
    peer.norm.eps = 1e-3
    x = torch.randn(2, 5, 16, dtype=D64) * 1e-2  # small activations: eps matters
    fast = STAttention.from_peer(peer, scale=peer.scale)
    assert fast.norm.eps == 1e-3
    torch.testing.assert_close(fast(x, frame_len=5, mask="full"), peer(x), rtol=1e-12, atol=1e-12)


def test_shared_qk_norm_option():
    with pytest.raises(ValueError, match="qk_norm"):
        STAttention(16, 2, qk_norm="both")
    m = STAttention(16, 2, qk_norm="shared")
    assert {"norm.weight", "norm.bias"} <= set(m.state_dict()) and "q_norm.weight" not in m.state_dict()


@pytest.mark.skipif(not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"),
                    reason="needs CUDA or the Triton interpreter")
@pytest.mark.parametrize("causal", [False, True])
def test_univla_swap_runs_on_the_kernels(causal):
    """The swapped UniVLA module (partial rotary over the reshaped sequence) is what the Triton
    backend takes: forward and input gradient within the error-ratio rule of the fp64 peer."""
    from fastlam.nn import SequenceAttention
    from fastlam.testing import assert_error_ratio

    torch.manual_seed(4)
    dev = "cuda" if torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1" else "cpu"
    peer = PartialRotaryAttention(32, 2).to(dev)
    fast = SequenceAttention.from_peer(peer, rope_dim=8, backend="triton")
    x = torch.randn(3, 7, 32, device=dev)
    outs, grads = [], []
    for module, dtype in ((fast, torch.float32), (copy.deepcopy(peer).double(), D64), (peer, torch.float32)):
        xi = x.to(dtype).clone().requires_grad_()
        y = module(xi, causal=causal)
        y.square().sum().backward()
        outs.append(y)
        grads.append(xi.grad)
    assert_error_ratio(outs[0], outs[1], outs[2], factor=2, atol=1e-5, what="out")
    assert_error_ratio(grads[0], grads[1], grads[2], factor=3, atol=1e-5, what="dx")
