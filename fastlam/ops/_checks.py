"""Argument validation shared by every op.

Errors name the argument and what was expected, so a user sees the mistake at the call
site instead of a shape error deep inside a kernel or autograd.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    x,
    *,
    ndim: int | None = None,
    shape_doc: str = "",
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor{' of shape ' + shape_doc if shape_doc else ''}, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor{' of shape ' + shape_doc if shape_doc else ''}, got shape {tuple(x.shape)}"
        )
    if dtypes is not None and x.dtype not in tuple(dtypes):
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor], *, what: str = "shape") -> None:
    first = tensors[0]
    for n, t in zip(names[1:], tensors[1:]):
        if what == "shape" and t.shape != first.shape:
            raise ValueError(f"{n}: expected the same shape as {names[0]} {tuple(first.shape)}, got {tuple(t.shape)}")
        if what == "dtype" and t.dtype != first.dtype:
            raise TypeError(f"{n}: expected the same dtype as {names[0]} ({first.dtype}), got {t.dtype}")
        if what == "device" and t.device != first.device:
            raise ValueError(f"{n}: expected the same device as {names[0]} ({first.device}), got {t.device}")


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if isinstance(value, torch.Tensor):  # never print a whole tensor into an error message
        raise TypeError(f"{name}: expected one of {choices}, got a tensor of shape {tuple(value.shape)} "
                        f"and dtype {str(value.dtype).replace('torch.', '')}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
