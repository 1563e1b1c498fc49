"""fastlam's Muon: the Newton-Schulz iteration batched over matrices of one shape gives
torch.optim.Muon's updates, and its FLOPs are counted the way the iteration runs them."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastlam.models import LatentActionWorldModel
from fastlam.muon import Muon, muon_step_flops, newton_schulz_batched, newton_schulz_flops, orthogonalise
from fastlam.optim import OptimConfig, build_optimizers
from fastlam.train import TrainConfig

COEFFS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults
# Two pairs of one shape, a transposed one that joins the first group, a square and a tall one.
SHAPES = [(24, 72), (72, 24), (24, 72), (40, 40), (48, 16), (40, 40)]


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    stack = torch.randn(5, 24, 72)
    batched = newton_schulz_batched(stack, COEFFS, 5, 1e-7)
    singles = torch.cat([newton_schulz_batched(stack[i:i + 1], COEFFS, 5, 1e-7) for i in range(5)])
    assert batched.dtype == torch.bfloat16
    torch.testing.assert_close(batched, singles, rtol=0, atol=0)
    # It orthogonalises: the singular values end near 1 (Muon's quintic leaves them in ~[0.5, 1.5]).
    sv = torch.linalg.svdvals(batched.float())
    assert sv.min() > 0.3 and sv.max() < 1.6


def test_orthogonalise_keeps_order_and_orientation():
    updates = [torch.randn(s) for s in SHAPES]
    out = orthogonalise(updates, COEFFS, 5, 1e-7)
    assert [tuple(o.shape) for o in out] == SHAPES
    for u, o in zip(updates, out):  # each one as if it were alone
        alone = newton_schulz_batched((u if u.shape[0] <= u.shape[1] else u.T)[None], COEFFS, 5, 1e-7)[0]
        torch.testing.assert_close(o, alone if u.shape[0] <= u.shape[1] else alone.T, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [{}, {"nesterov": False, "adjust_lr_fn": "match_rms_adamw", "momentum": 0.9}])
def test_steps_match_torch_muon(kwargs):
    """Three steps with fresh gradients: the same parameters and momentum buffers as
    torch.optim.Muon's one-matrix-at-a-time step (bit for bit on this CPU)."""
    ours = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, weight_decay=0.04, **kwargs)
    b = torch.optim.Muon(ref, lr=0.02, weight_decay=0.04, **kwargs)
    for _ in range(3):
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, ref):
        assert not torch.equal(p, torch.zeros_like(p))
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        torch.testing.assert_close(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"], rtol=0, atol=0)
    # The optimizer state is torch's: a checkpoint of one loads into the other.
    b.load_state_dict(a.state_dict())


def test_a_parameter_without_gradient_is_left_alone():
    p, q = torch.nn.Parameter(torch.randn(8, 16)), torch.nn.Parameter(torch.randn(8, 16))
    before = q.detach().clone()
    opt = Muon([p, q], lr=0.1)
    p.grad = torch.randn_like(p)
    opt.step()
    assert torch.equal(q, before) and q not in opt.state


def test_newton_schulz_flops_match_the_flop_counter():
    """The count is what the batched iteration's matmuls are (torch's FLOP counter on the
    actual call), for wide and tall matrices alike."""
    for shape in [(24, 72), (72, 24), (40, 40)]:
        u = torch.randn(shape)
        with FlopCounterMode(display=False) as counter:
            orthogonalise([u], COEFFS, 5, 1e-7)
        assert counter.get_total_flops() == newton_schulz_flops(shape, 5)


def test_muon_step_flops_counts_the_muon_matrices_only():
    cfg = TrainConfig()
    model = LatentActionWorldModel(cfg.model)
    opts = build_optimizers(model, OptimConfig())
    muon = [o for o in opts if isinstance(o, Muon)]
    assert len(muon) == 1
    expected = sum(newton_schulz_flops(p.shape) for g in muon[0].param_groups for p in g["params"])
    assert expected > 0 and muon_step_flops(opts) == expected
    assert muon_step_flops([o for o in opts if not isinstance(o, Muon)]) == 0
    assert muon_step_flops(build_optimizers(model, OptimConfig(use_muon=False))) == 0

    # DeepSpeed's MuonWithAuxAdam keeps its AdamW parameters in groups with use_muon=False.
    class MuonWithAuxAdam:
        param_groups = [{"params": [torch.zeros(8, 32)], "use_muon": True},
                        {"params": [torch.zeros(100, 100), torch.zeros(5)], "use_muon": False}]

    assert muon_step_flops([MuonWithAuxAdam()]) == newton_schulz_flops((8, 32))
