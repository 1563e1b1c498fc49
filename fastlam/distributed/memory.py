"""What one rank holds in memory, by walking its tensors (storages counted once)."""
from __future__ import annotations

import resource

import torch
from torch import nn


def tensor_bytes(obj, seen: set, depth: int = 0) -> int:
    """Bytes of the tensor storages in ``obj`` (a tensor, or dicts / lists / tuples of them nested at most
    five deep) whose (storage, device) key is not yet in ``seen``; adds the keys it counts."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "meta" or obj.numel() == 0:
            return 0
        key = (obj.untyped_storage().data_ptr(), obj.device)
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if depth > 4:
        return 0
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    return 0


def rank_memory(engine, extra_modules: tuple[nn.Module, ...] = ()) -> dict:
    """Bytes this rank holds, measured by walking its tensors (storages counted once): model
    weights as they rest between steps (ZeRO-3: the local partition; ``extra_modules``: weights
    kept outside the engine, i.e. the replicated encoder), gradients (including ZeRO's gradient
    partitions and reduction buckets) and optimizer state (fp32 master copies, Adam moments,
    Muon momentum), the largest holders by name, and the process's peak RSS."""
    seen: set = set()
    params = 0
    for module in (engine.module, *extra_modules):
        for p in module.parameters():
            params += tensor_bytes(p.ds_tensor if hasattr(p, "ds_tensor") else p.data, seen)
    grads = sum(tensor_bytes(p.grad, seen) for p in engine.module.parameters() if p.grad is not None)
    opt = engine.optimizer
    detail = {"param.grad": grads}
    optim = tensor_bytes(getattr(opt, "state", {}), seen)
    inner = getattr(opt, "optimizer", None)
    if inner is not None:
        optim += tensor_bytes(dict(inner.state), seen)
    detail["optimizer.state"] = optim
    # ZeRO keeps its fp32 partitions, flat buffers, gradient partitions and buckets as attributes.
    for name, value in vars(opt).items():
        b = tensor_bytes(value, seen)
        if not b:
            continue
        detail[name] = b
        if "grad" in name or "ipg" in name or "bucket" in name:
            grads += b
        else:
            optim += b
    top = dict(sorted(detail.items(), key=lambda kv: -kv[1])[:8])
    return {"params_bytes": params, "grads_bytes": grads, "optim_bytes": optim, "largest": top,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
