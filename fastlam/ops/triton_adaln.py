"""Frame-wise AdaLN kernels (kernels/adaln.py) as ``torch.library`` custom ops with fake
implementations and registered autograd formulas (``torch.compile`` traces them without graph
breaks): ``fastlam::frame_adaln_fwd/bwd`` and ``fastlam::frame_gated_residual_fwd/bwd``.

Mixed dtypes (autocast: bf16 modulation, fp32 residual stream) give the promoted output dtype,
as the reference's arithmetic does; every gradient comes back in its input's dtype.
"""
from __future__ import annotations

import torch


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _promoted(*tensors) -> torch.dtype:
    dt = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dt = torch.promote_types(dt, t.dtype)
    return dt


@torch.library.custom_op("fastlam::frame_adaln_fwd", mutates_args=())
def frame_adaln_fwd(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, frame_len: int, eps: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd): y = LN(x) * (1 + scale_t) + shift_t; mean / rstd fp32 per token."""
    from fastlam.kernels.adaln import adaln_fwd  # optional dependency: the kernels need triton

    y, mean, rstd = adaln_fwd(_rows(x), _rows(shift), _rows(scale), weight, bias, frame_len, eps,
                              _promoted(x, shift, scale, weight, bias))
    return y.view(x.shape), mean, rstd


@frame_adaln_fwd.register_fake
def _(x, shift, scale, weight, bias, frame_len, eps):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape, dtype=_promoted(x, shift, scale, weight, bias)),
            x.new_empty((rows,), dtype=torch.float32), x.new_empty((rows,), dtype=torch.float32))


@torch.library.custom_op("fastlam::frame_adaln_bwd", mutates_args=())
def frame_adaln_bwd(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, frame_len: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dshift, dscale, dweight, dbias): per-frame grads fp32 (B*T, D); absent affine
    parameters give empty tensors."""
    from fastlam.kernels.adaln import adaln_bwd  # optional dependency: the kernels need triton

    dx, dshift, dscale, dw, db = adaln_bwd(_rows(x), _rows(scale), weight, bias, mean, rstd, _rows(dy), frame_len)
    def absent():  # a fresh tensor each: custom-op outputs may not alias one another
        return x.new_empty(0, dtype=torch.float32)

    return dx.view(x.shape), dshift, dscale, (absent() if dw is None else dw), (absent() if db is None else db)


@frame_adaln_bwd.register_fake
def _(dy, x, scale, weight, bias, mean, rstd, frame_len):
    d = x.shape[-1]
    frames = x.numel() // d // frame_len
    f32 = dict(dtype=torch.float32)
    return (x.new_empty(x.shape), x.new_empty((frames, d), **f32), x.new_empty((frames, d), **f32),
            x.new_empty((d,) if weight is not None else (0,), **f32),
            x.new_empty((d,) if bias is not None else (0,), **f32))


def _adaln_setup(ctx, inputs, output):
    x, shift, scale, weight, bias, frame_len, eps = inputs
    _, mean, rstd = output
    # mean / rstd are fp32 per token: 8 bytes a row instead of the normalised activations
    ctx.save_for_backward(x, scale, weight, bias, mean, rstd)
    ctx.meta = (shift.shape, shift.dtype, frame_len)


def _adaln_backward(ctx, dy, _dmean, _drstd):
    x, scale, weight, bias, mean, rstd = ctx.saved_tensors
    mshape, shift_dtype, frame_len = ctx.meta
    dx, dshift, dscale, dw, db = frame_adaln_bwd(dy, x, scale, weight, bias, mean, rstd, frame_len)
    return (dx, dshift.to(shift_dtype).view(mshape), dscale.to(scale.dtype).view(mshape),
            None if weight is None else dw.to(weight.dtype), None if bias is None else db.to(bias.dtype), None, None)


frame_adaln_fwd.register_autograd(_adaln_backward, setup_context=_adaln_setup)


@torch.library.custom_op("fastlam::frame_gated_residual_fwd", mutates_args=())
def frame_gated_residual_fwd(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, frame_len: int
                             ) -> torch.Tensor:
    """x + gate_t * branch."""
    from fastlam.kernels.adaln import gated_residual_fwd  # optional dependency: the kernels need triton

    out = gated_residual_fwd(_rows(x), _rows(branch), _rows(gate), frame_len, _promoted(x, branch, gate))
    return out.view(x.shape)


@frame_gated_residual_fwd.register_fake
def _(x, branch, gate, frame_len):
    return x.new_empty(x.shape, dtype=_promoted(x, branch, gate))


@torch.library.custom_op("fastlam::frame_gated_residual_bwd", mutates_args=())
def frame_gated_residual_bwd(dout: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, frame_len: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dbranch in branch's dtype, dgate fp32 (B*T, D))."""
    from fastlam.kernels.adaln import gated_residual_bwd  # optional dependency: the kernels need triton

    dbr, dgate = gated_residual_bwd(_rows(branch), _rows(gate), _rows(dout), frame_len)
    return dbr.view(branch.shape), dgate


@frame_gated_residual_bwd.register_fake
def _(dout, branch, gate, frame_len):
    d = branch.shape[-1]
    return branch.new_empty(branch.shape), branch.new_empty((branch.numel() // d // frame_len, d),
                                                            dtype=torch.float32)


def _gated_setup(ctx, inputs, output):
    x, branch, gate, frame_len = inputs
    ctx.save_for_backward(branch, gate)
    ctx.meta = (x.dtype, frame_len)


def _gated_backward(ctx, dout):
    branch, gate = ctx.saved_tensors
    x_dtype, frame_len = ctx.meta
    dbr = dgate = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        dbr, dgate = frame_gated_residual_bwd(dout, branch, gate, frame_len)
        dgate = dgate.to(gate.dtype).view(gate.shape)
    return dout.to(x_dtype), dbr, dgate, None


frame_gated_residual_fwd.register_autograd(_gated_backward, setup_context=_gated_setup)


def triton_frame_adaln_modulate(x, shift, scale, frame_len, weight=None, bias=None, eps=1e-6):
    return frame_adaln_fwd(x, shift, scale, weight, bias, int(frame_len), float(eps))[0]


def triton_frame_gated_residual(x, branch, gate, frame_len):
    return frame_gated_residual_fwd(x, branch, gate, int(frame_len))
