"""The VQ codebook and its maintenance: the code table (:class:`Codebook`), k-means++
initialisation, and the edits a training step makes to it (:class:`CodebookMaintenance`:
initialisation from the first batch, EMA updates, EMA expiry, scheduled dead-code resets, and
their deferral out of a compiled forward). ``VectorQuantizer`` (``quantizers``) holds the
search, the losses and the gradient estimators, and inherits the maintenance; every edit here
is broadcast from rank 0 (or all-reduced) so the codebooks of all ranks stay equal."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..ops import vq_nearest


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _broadcast_(*tensors: torch.Tensor) -> None:
    """Codebook edits drawn from one rank's data must be the same on every rank."""
    if _distributed():
        for t in tensors:
            dist.broadcast(t, 0)


def _all_reduce_(*tensors: torch.Tensor) -> None:
    if _distributed():
        for t in tensors:
            dist.all_reduce(t)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1, eps=1e-6)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (float64 modules end to end); half precision is computed in fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code distribution given by counts (1 when nothing was counted)."""
    p = counts.float() / counts.float().sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())




def _sample_rows(samples: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` rows of ``samples``: distinct rows while there are enough, then rows drawn again
    with a small jitter, so that no two codes are exact duplicates (a duplicate never wins an
    argmin and would be dead again at the next reset)."""
    n = samples.shape[0]
    perm = torch.randperm(n, device=samples.device)
    if num <= n:
        return samples[perm[:num]].clone()
    extra = samples[torch.randint(0, n, (num - n,), device=samples.device)]
    scale = samples.std(dim=0, keepdim=True) if n > 1 else samples.abs().clamp_min(1.0)
    extra = extra + 0.01 * scale.nan_to_num(1.0).clamp_min(1e-6) * torch.randn_like(extra)
    return torch.cat([samples[perm], extra])


def kmeans_plus_plus(x: torch.Tensor, k: int, iters: int = 10, *, cosine: bool = False,
                     backend: str = "auto") -> torch.Tensor:
    """k-means++ seeding (D^2 sampling) of ``k`` centres from the rows of ``x`` (N, D), then
    ``iters`` Lloyd steps whose assignments use fastlam's (fused on CUDA) nearest-code search.
    Fewer rows than centres: every row becomes a centre and the rest are jittered rows."""
    x = x.detach().to(_work_dtype(x))
    if cosine:
        x = l2norm(x)
    n = x.shape[0]
    if n <= k:
        return _sample_rows(x, k)
    centres = torch.empty(k, x.shape[1], device=x.device, dtype=x.dtype)
    x_sq = x.pow(2).sum(1)

    def sq_dist(c: torch.Tensor) -> torch.Tensor:  # a matrix-vector product, not an (N, D) temporary
        return (x_sq - 2.0 * (x @ c) + c.dot(c)).clamp_min(0.0)

    centres[0] = x[torch.randint(0, n, (), device=x.device)]
    d2 = sq_dist(centres[0])
    for i in range(1, k):
        total = d2.sum()
        pick = (torch.multinomial(d2 / total, 1)[0] if total > 0 else torch.randint(0, n, (), device=x.device))
        centres[i] = x[pick]
        d2 = torch.minimum(d2, sq_dist(centres[i]))
    for _ in range(iters):
        idx = vq_nearest(x, centres, backend=backend)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep, None]
        if cosine:
            centres = l2norm(centres)
    return centres


class Codebook(nn.Embedding):
    """The code table: an ``nn.Embedding`` (peers call ``vq.codebook(idx)`` and read
    ``vq.codebook.weight``). Indexing it (``vq.codebook[i]``, ``vq.codebook[i] = v``) reads and
    writes ``weight``, as the bare Parameter of earlier fastlam versions did."""

    def __getitem__(self, item):
        return self.weight[item]

    def __setitem__(self, item, value):
        self.weight[item] = value

    @property
    def shape(self):
        return self.weight.shape


class CodebookMaintenance:
    """The codebook edits of :class:`~fastlam.nn.quantizers.VectorQuantizer`, which provides
    the state they read and write: ``codebook``, ``codebook_size``, ``dim``, ``init``,
    ``kmeans_iters``, ``cosine``, ``ema`` (with the ``cluster_size`` / ``embed_avg`` buffers),
    ``decay``, ``eps``, the dead-code thresholds and schedule, the ``usage`` window buffers,
    ``initted``, ``frozen`` and ``backend``."""

    # Every edit is data-dependent (nonzero, k-means, a count read back): run eagerly even when
    # called from a compiled forward (once, on the first training step), never traced.
    @torch.compiler.disable
    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor, force: bool = False) -> None:
        """Initialise the codes from latents ``z`` (..., D) per ``init`` (``uniform`` / ``randn``
        with ``force`` draw from ``data``'s rule)."""
        if self.frozen and not force:
            return
        z = z.detach().reshape(-1, self.dim)
        z = z[torch.isfinite(z).all(dim=1)].to(_work_dtype(self.codebook.weight))
        if z.shape[0] == 0:
            return
        if self.cosine:
            z = l2norm(z)
        if self.init == "kmeans":
            codes = kmeans_plus_plus(z, self.codebook_size, self.kmeans_iters, cosine=self.cosine, backend=self.backend)
        else:
            codes = _sample_rows(z, self.codebook_size)
        w = self.codebook.weight
        w.copy_(codes.to(w.dtype))
        if self.ema:
            self.cluster_size.fill_(1.0)
            self.embed_avg.copy_(w)
            _broadcast_(self.cluster_size, self.embed_avg)
        _broadcast_(w)
        self.initted.fill_(True)
        self._initted_flag = True

    @torch.no_grad()
    def _replace(self, dead: torch.Tensor, samples: torch.Tensor, cluster_size: float = 1.0) -> int:
        dead = dead.nonzero().flatten()
        samples = samples[torch.isfinite(samples).all(dim=1)].to(_work_dtype(self.codebook.weight))
        if not dead.numel() or not samples.shape[0]:
            return 0
        if self.cosine:
            samples = l2norm(samples)
        new = _sample_rows(samples, dead.numel())
        w = self.codebook.weight
        w[dead] = new.to(w.dtype)
        _broadcast_(w)
        if self.ema:
            self.cluster_size[dead] = cluster_size
            self.embed_avg[dead] = (new * cluster_size).to(self.embed_avg.dtype)
            _broadcast_(self.cluster_size, self.embed_avg)
        return int(dead.numel())

    @torch.no_grad()
    def reset_dead_codes(self, z: torch.Tensor, force: bool = False) -> int:
        """Re-initialise codes chosen fewer than ``threshold_dead_code`` times since the last
        reset from rows of ``z`` (..., D); returns how many. A frozen codebook is left alone
        (returns 0) unless ``force``. Starts a new usage window either way."""
        n = 0
        if not self.frozen or force:
            counts = self.usage.clone()
            _all_reduce_(counts)
            n = self._replace(counts < self.threshold_dead_code, z.detach().reshape(-1, self.dim))
        self.usage.zero_()
        self.seen_since_reset.zero_()
        self.steps_since_reset.zero_()
        return n

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        finite = torch.isfinite(x).all(dim=1)
        dtype = self.embed_avg.dtype  # the EMA statistics' own dtype (fp64 in a float64 module)
        xs = x.to(dtype) * finite[:, None]
        embed_sum = torch.zeros(self.codebook_size, self.dim, device=x.device, dtype=dtype).index_add_(
            0, idx, xs.nan_to_num(0.0))
        counts = counts.to(self.cluster_size.dtype)
        _all_reduce_(counts, embed_sum)
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        self.embed_avg.lerp_(embed_sum, 1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        w = self.embed_avg / smoothed[:, None]
        if self.cosine:
            w = l2norm(w)
        self.codebook.weight.copy_(w.to(self.codebook.weight.dtype))

    def _needs_init(self) -> bool:
        if torch.compiler.is_compiling():
            return not self._initted_flag
        self._initted_flag = bool(self.initted)  # eager: the buffer decides (it may have been set by hand)
        return not self._initted_flag

    @torch.no_grad()
    def _edit_codebook(self, x: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> dict:
        """The training step's codebook edits from its (detached) latents ``x``, their codes and
        finite-row counts, in the eager order: EMA update, EMA expiry, scheduled dead-code reset."""
        metrics = {}
        if self.ema and not self.frozen:
            self._ema_update(x, idx, counts)
            if self.threshold_ema_dead_code > 0:
                n = self._replace(self.cluster_size < self.threshold_ema_dead_code, x,
                                  cluster_size=self.threshold_ema_dead_code)
                metrics["reg/codes_expired"] = torch.tensor(float(n))
        due = ((self.reset_every and int(self.seen_since_reset) >= self.reset_every)
               or (self.reset_every_steps and int(self.steps_since_reset) >= self.reset_every_steps))
        if due:
            metrics["reg/codes_reset"] = torch.tensor(float(self.reset_dead_codes(x)))
        return metrics

    @torch.compiler.disable
    def apply_codebook_edits(self) -> dict:
        """With ``defer_codebook_edits``: apply the codebook edits of the last training forward
        (call it after the forward, before the backward, as the eager forward would have made
        them) and return their metrics (``reg/codes_reset``, ``reg/codes_expired``); ``{}`` when
        nothing is pending. Raises, as the eager forward does, when that batch held NaN / Inf
        latents and ``check_finite`` is on."""
        if self._pending is None:
            return {}
        x, idx, counts, all_finite = self._pending
        self._pending = None
        if self.check_finite and not bool(all_finite):
            bad = x.shape[0] - int(torch.isfinite(x).all(dim=1).sum())
            raise ValueError(f"z: {bad} of {x.shape[0]} latents contain NaN or Inf; refusing to quantize them")
        return self._edit_codebook(x, idx, counts)
