"""Autograd wrappers of the frame-wise AdaLN kernels (kernels/frame_adaln.py)."""
from __future__ import annotations

import torch


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


class _FrameAdaLNFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, weight, bias, frame_len, eps):
        from fastlam.kernels.frame_adaln import adaln_fwd

        x2, sh2, sc2 = _rows(x), _rows(shift), _rows(scale)
        # mixed dtypes (autocast: bf16 modulation, fp32 residual stream) give the promoted dtype,
        # as the reference's arithmetic does
        out_dtype = x.dtype
        for t in (shift, scale, weight, bias):
            if t is not None:
                out_dtype = torch.promote_types(out_dtype, t.dtype)
        y, mean, rstd = adaln_fwd(x2, sh2, sc2, weight, bias, frame_len, eps, out_dtype)
        # mean / rstd are fp32 per token: 8 bytes a row instead of the normalised activations
        ctx.save_for_backward(x2, sc2, weight, bias, mean, rstd)
        ctx.meta = (x.shape, shift.shape, shift.dtype, frame_len)
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        from fastlam.kernels.frame_adaln import adaln_bwd

        x2, sc2, weight, bias, mean, rstd = ctx.saved_tensors
        xshape, mshape, shift_dtype, frame_len = ctx.meta
        dx, dshift, dscale, dw, db = adaln_bwd(x2, sc2, weight, bias, mean, rstd, _rows(dy), frame_len)
        return (dx.view(xshape), dshift.to(shift_dtype).view(mshape), dscale.to(sc2.dtype).view(mshape),
                None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype), None, None)


class _FrameGatedResidualFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, branch, gate, frame_len):
        from fastlam.kernels.frame_adaln import gated_residual_fwd

        br2, g2 = _rows(branch), _rows(gate)
        out_dtype = torch.promote_types(torch.promote_types(x.dtype, branch.dtype), gate.dtype)
        out = gated_residual_fwd(_rows(x), br2, g2, frame_len, out_dtype)
        ctx.save_for_backward(br2, g2)
        ctx.meta = (x.shape, x.dtype, gate.shape, frame_len)
        return out.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        from fastlam.kernels.frame_adaln import gated_residual_bwd

        br2, g2 = ctx.saved_tensors
        xshape, xdtype, gshape, frame_len = ctx.meta
        dbr = dgate = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dbr, dgate = gated_residual_bwd(br2, g2, _rows(dout), frame_len)
            dbr, dgate = dbr.view(xshape), dgate.to(g2.dtype).view(gshape)
        return dout.to(xdtype), dbr, dgate, None


def triton_frame_adaln_modulate(x, shift, scale, frame_len, weight=None, bias=None, eps=1e-6):
    return _FrameAdaLNFn.apply(x, shift, scale, weight, bias, frame_len, eps)


def triton_frame_gated_residual(x, branch, gate, frame_len):
    return _FrameGatedResidualFn.apply(x, branch, gate, frame_len)
