"""The VQ family LAM codebases import: VectorQuantizer (plain / EMA / cosine) and ResidualVQ
here, FSQ and LFQ in ``scalar_quantizers``, with the call and return shapes of
``vector-quantize-pytorch`` where that is sensible (differences are listed in each class's
docstring and in the README). The whole family takes the peer's argument names: ``dim``,
``codebook_size``, ``threshold_*_dead_code``; its checkpoints cross with ``vq_checkpoints``.

Only the nearest-code search of VectorQuantizer is a fused Triton kernel (it is the one part
that scales with N x K x D).
"""
from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import vector_quantize
# Codebook and kmeans_plus_plus are fastlam.nn's public names, exported from here as before.
from .codebook import Codebook, CodebookMaintenance, kmeans_plus_plus, l2norm, perplexity
from .renamed_arguments import RenamedAttribute, renamed_arguments
from .vq_checkpoints import VECTOR_QUANTIZE_LAYOUT, peer_vq_keys_to_fastlam_

__all__ = ["VQ_INITS", "VQOutput", "RVQOutput", "VectorQuantizer", "ResidualVQ", "Codebook", "kmeans_plus_plus"]

VQ_INITS = ("uniform", "kaiming", "data", "kmeans", "randn")
# reset_every_steps=100 applies only when neither schedule argument is passed: passing
# reset_every=None (the old way to switch resets off) must mean off, not "the default steps".
_UNSET = object()


# ----------------------------------------------------------------------------- outputs

class _VQFields(NamedTuple):
    z: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


class VQOutput(_VQFields):
    """``(z, indices, loss)`` as ``vector-quantize-pytorch``'s ``VectorQuantize`` returns, so
    ``z, idx, loss = vq(x)`` works; ``.metrics`` (a dict of detached tensors) rides along for
    fastlam's trainer, which reads ``out.z``, ``out.loss`` and ``out.metrics``."""

    def __new__(cls, z, indices, loss, metrics: dict | None = None):
        self = super().__new__(cls, z, indices, loss)
        self.metrics = {} if metrics is None else metrics
        return self


class RVQOutput(NamedTuple):
    z: torch.Tensor
    indices: torch.Tensor  # (..., num_quantizers)
    losses: torch.Tensor  # (num_quantizers,)


# ----------------------------------------------------------------------------- helpers

# VectorQuantizer's first argument names, before the family took vector-quantize-pytorch's.
_VQ_OLD_NAMES = {"num_codes": "codebook_size", "action_dim": "dim", "dead_code_threshold": "threshold_dead_code"}


def _rotation_trick(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotation-trick estimator (Fifty et al. 2024, section 4.2): the forward value is q (up to
    rounding); the gradient to x is rotated and rescaled like the map taking x onto q."""
    eps = 1e-6
    nx = x.norm(dim=-1, keepdim=True)
    nq = q.norm(dim=-1, keepdim=True)
    u = x / nx.clamp_min(eps)
    qn = q / nq.clamp_min(eps)
    w = l2norm(u + qn).detach()
    out = (x - 2 * (x * w).sum(-1, keepdim=True) * w
           + 2 * (x * u.detach()).sum(-1, keepdim=True) * qn.detach())
    return out * (nq / nx.clamp_min(eps)).detach()


# ----------------------------------------------------------------------------- VectorQuantizer

class VectorQuantizer(CodebookMaintenance, nn.Module):
    """Discrete latents (VQ-VAE): nearest code by L2 (or cosine), a straight-through (or
    rotation-trick) gradient, loss ``codebook_weight * ||sg(z) - e||^2 + commitment * ||z -
    sg(e)||^2`` (the first term only while the codebook is learned by gradient), codebooks
    initialised from the first training batch, dead-code resets on a reachable schedule and
    optional EMA codebook updates.

    Returns :class:`VQOutput` ``(z, indices, loss)`` plus ``.metrics``; ``z`` has the input's
    shape and equals the chosen code (the normalised code with ``cosine``), ``indices`` the
    input's leading shape. ``stats()`` gives codes used and perplexity as tensors.

    Args:
        codebook_size, dim: codebook size K and code dimension D, positionally in that order
            (the peer's ``VectorQuantize`` takes ``dim`` first: pass them by name, or use
            :meth:`from_vector_quantize_kwargs`). Their first names, ``num_codes`` and
            ``action_dim`` (and ``dead_code_threshold`` below), still work, with a
            DeprecationWarning.
        commitment: weight of the commitment term.
        reset_every: reset dead codes every this many latents seen in training (the paper: every
            300k videos x 7 latents); ``reset_every_steps``: every this many training calls.
            Either may be None/0 (off); the first one reached triggers. ``reset_every_steps``
            defaults to 100 only when neither is passed: ``reset_every=None`` alone (the old way
            to switch resets off) means no resets. A code is dead when it
            was chosen fewer than ``threshold_dead_code`` times since the last reset (1: never;
            0: no code is ever dead); dead codes are re-initialised from rows of the current
            batch, distinct rows first (the peer's rule), jittered repeats when there are more
            dead codes than rows.
        init: ``uniform`` (U(-1/K, 1/K), as taming/Genie-style peers), ``kaiming``
            (vector-quantize-pytorch's: U(-b, b), b = sqrt(6 / (K * D))), ``data`` (random rows of
            the first training batch), ``kmeans`` (k-means++ + ``kmeans_iters`` Lloyd steps on
            the first training batch) or ``randn`` (fastlam < 0.2; norms ~sqrt(D) collapse
            small-scale runs onto a handful of codes).
        ema: update the codebook by exponential moving averages of assigned latents (decay,
            Laplace smoothing ``eps``) instead of by gradient; ``threshold_ema_dead_code`` > 0
            also replaces, every step, codes whose EMA cluster size fell below it (as
            ``vector-quantize-pytorch``): the per-step EMA counterpart of the scheduled
            ``threshold_dead_code`` reset, which applies with or without EMA.
        cosine: quantise l2-normalised latents against l2-normalised codes.
        rotation_trick: the rotation-trick gradient instead of the straight-through one.
        freeze_codebook: never change the codebook (no init, EMA or reset). A non-EMA codebook
            whose ``weight.requires_grad`` is False counts as frozen too; ``reset_dead_codes(...,
            force=True)`` overrides both.
        backend: ``auto`` runs the fused Triton search on CUDA; ``torch`` the reference.
        check_finite: NaN / Inf latents raise instead of reaching the codebook statistics.
        count_usage_in_eval: eval forwards count their codes too (``stats()`` and the metrics
            in eval read the codes used since the module was put into eval); they never count
            towards the training window that decides dead codes. False: eval counts nothing.
        eval_loss: return the loss in eval too (fastlam's validation losses); False returns 0,
            as vector-quantize-pytorch does.
        peer_loss_value: a learnable codebook's loss reads as vector-quantize-pytorch's one term
            (``commitment * ||z - e||^2``; same gradients) instead of the sum of the commitment
            and codebook terms (by default twice that with ``codebook_weight == commitment``).

    Every argument may be passed in vector-quantize-pytorch's form through
    :meth:`from_vector_quantize_kwargs`; its checkpoints load directly (``load_state_dict``) and
    ``fastlam.nn.vq_checkpoints.to_peer_state_dict`` writes them back. Works in float64.

    Example:
        >>> vq = VectorQuantizer(codebook_size=16, dim=8)
        >>> z, idx, loss = vq(torch.randn(5, 8))
        >>> bool((z == vq.codebook(idx)).all()), idx.shape
        (True, torch.Size([5]))
    """

    peer_checkpoint_layout = VECTOR_QUANTIZE_LAYOUT  # fastlam.nn.vq_checkpoints converts it
    num_codes = RenamedAttribute("codebook_size")
    action_dim = RenamedAttribute("dim")
    dead_code_threshold = RenamedAttribute("threshold_dead_code")

    @renamed_arguments(**_VQ_OLD_NAMES)
    def __init__(self, codebook_size: int = 1024, dim: int = 128, commitment: float = 0.25,
                 reset_every: int | None = _UNSET, backend: str = "auto", check_finite: bool = True, *,
                 reset_every_steps: int | None = _UNSET, threshold_dead_code: float = 1.0,
                 codebook_weight: float = 1.0, init: str = "uniform", kmeans_iters: int = 10,
                 ema: bool = False, decay: float = 0.99, eps: float = 1e-5, threshold_ema_dead_code: float = 0.0,
                 cosine: bool = False, rotation_trick: bool = False, freeze_codebook: bool = False,
                 count_usage_in_eval: bool = True, eval_loss: bool = True, peer_loss_value: bool = False):
        super().__init__()
        if reset_every_steps is _UNSET:
            reset_every_steps = 100 if reset_every is _UNSET else None
        if reset_every is _UNSET:
            reset_every = None
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size, dim: expected >= 1, got {codebook_size}, {dim}")
        if init not in VQ_INITS:
            raise ValueError(f"init: expected one of {VQ_INITS}, got {init!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        if eps <= 0 or commitment < 0 or codebook_weight < 0 or threshold_dead_code < 0 or threshold_ema_dead_code < 0:
            raise ValueError("eps: expected > 0; commitment, codebook_weight, threshold_dead_code, "
                             f"threshold_ema_dead_code: expected >= 0; got {eps}, {commitment}, {codebook_weight}, "
                             f"{threshold_dead_code}, {threshold_ema_dead_code}")
        for name, v in (("reset_every", reset_every), ("reset_every_steps", reset_every_steps)):
            if v is not None and v < 0:
                raise ValueError(f"{name}: expected None or >= 0, got {v}")
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment, self.codebook_weight = commitment, codebook_weight
        self.reset_every, self.reset_every_steps = reset_every, reset_every_steps
        self.threshold_dead_code = threshold_dead_code
        self.init, self.kmeans_iters = init, kmeans_iters
        self.ema, self.decay, self.eps, self.threshold_ema_dead_code = ema, decay, eps, threshold_ema_dead_code
        self.cosine, self.rotation_trick, self.freeze_codebook = cosine, rotation_trick, freeze_codebook
        self.backend, self.check_finite = backend, check_finite
        self.count_usage_in_eval, self.eval_loss, self.peer_loss_value = count_usage_in_eval, eval_loss, peer_loss_value
        self.codebook = Codebook(codebook_size, dim)
        with torch.no_grad():
            if init == "randn":
                self.codebook.weight.normal_()
            elif init == "kaiming":
                # vector-quantize-pytorch's init: kaiming_uniform_ of its (1, K, D) codebook,
                # whose fan-in is K * D: U(-b, b) with b = sqrt(6 / (K * D))
                bound = math.sqrt(6.0 / (codebook_size * dim))
                self.codebook.weight.uniform_(-bound, bound)
            else:  # data / kmeans start uniform too, which is what eval sees before training
                self.codebook.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            if cosine:
                self.codebook.weight.copy_(l2norm(self.codebook.weight))
        if ema:
            self.codebook.weight.requires_grad_(False)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_avg", self.codebook.weight.detach().clone())
        self.register_buffer("usage", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("seen_since_reset", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_since_reset", torch.zeros((), dtype=torch.long))
        self.register_buffer("initted", torch.tensor(init in ("uniform", "kaiming", "randn")))
        self.register_buffer("batch_usage", torch.zeros(codebook_size, dtype=torch.long), persistent=False)
        # codes chosen in eval since the module last left training (count_usage_in_eval): kept
        # apart from ``usage`` so that evaluating mid-run never keeps a code alive at a reset
        self.register_buffer("eval_usage", torch.zeros(codebook_size, dtype=torch.long), persistent=False)
        # ``initted`` as a Python bool, the one a compiled forward reads: reading the buffer
        # there would break the graph; torch.compile guards on this flag instead, so the step
        # after the initialisation recompiles once and later steps see no branch at all.
        self._initted_flag = bool(self.initted)
        # True (the trainer's ``compile: true`` sets it): the forward only searches, counts and
        # keeps the batch; EMA updates, expiries and dead-code resets wait for
        # apply_codebook_edits(), which runs eagerly outside the compiled region.
        self.defer_codebook_edits = False
        self._pending: tuple | None = None

    @staticmethod
    def head_features(action_dim: int) -> int:
        return action_dim

    @staticmethod
    def vector_quantize_arguments(dim: int, codebook_size: int, *, commitment_weight: float = 1.0,
                                  decay: float = 0.8, eps: float = 1e-5, kmeans_init: bool = False,
                                  kmeans_iters: int = 10, use_cosine_sim: bool = False,
                                  threshold_ema_dead_code: float = 0, ema_update: bool = True,
                                  learnable_codebook: bool = False, rotation_trick: bool = True,
                                  freeze_codebook: bool = False, **kw) -> dict:
        """This class's keyword arguments for ``vector_quantize_pytorch.VectorQuantize(dim,
        codebook_size, ...)``, read with the peer's names and defaults: EMA, decay 0.8, rotation
        trick, kaiming-uniform codes, no scheduled resets, the peer's loss value (one term for a
        learnable codebook), loss 0 in eval. An argument the peer
        takes but fastlam does not (heads, codebook_dim, ...) is a ValueError naming it."""
        if kw:
            raise ValueError(f"vector-quantize-pytorch arguments fastlam's VectorQuantizer does not support: "
                             f"{sorted(kw)}; drop them, or use vector_quantize_pytorch itself")
        if threshold_ema_dead_code > 0 and (learnable_codebook or not ema_update):
            raise ValueError("threshold_ema_dead_code > 0 with a learnable (non-EMA) codebook: fastlam expires "
                             "codes by their EMA cluster size only with EMA; for a learnable codebook pass "
                             "fastlam's scheduled reset instead (threshold_dead_code=..., reset_every_steps=...)")
        return dict(codebook_size=codebook_size, dim=dim, commitment=commitment_weight, reset_every=None,
                    reset_every_steps=None, codebook_weight=commitment_weight,
                    init="kmeans" if kmeans_init else "kaiming", kmeans_iters=kmeans_iters,
                    ema=ema_update and not learnable_codebook, decay=decay, eps=eps,
                    threshold_ema_dead_code=threshold_ema_dead_code, cosine=use_cosine_sim,
                    rotation_trick=rotation_trick and dim > 1, freeze_codebook=freeze_codebook, eval_loss=False,
                    peer_loss_value=True)

    @classmethod
    def from_vector_quantize_kwargs(cls, dim: int, codebook_size: int, **peer_kwargs) -> "VectorQuantizer":
        """A VectorQuantizer configured as ``vector_quantize_pytorch.VectorQuantize(dim,
        codebook_size, **peer_kwargs)`` (see :meth:`vector_quantize_arguments`)."""
        return cls(**cls.vector_quantize_arguments(dim, codebook_size, **peer_kwargs))

    # ---- state ------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self.freeze_codebook or (not self.ema and not self.codebook.weight.requires_grad)

    def codes(self) -> torch.Tensor:
        """The codes the search uses (normalised with ``cosine``), differentiable."""
        w = self.codebook.weight
        return l2norm(w) if self.cosine else w

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codes())

    get_output_from_indices = get_codes_from_indices

    def train(self, mode: bool = True):
        if self.training and not mode:  # a new evaluation starts its own count
            self.eval_usage.zero_()
        return super().train(mode)

    @torch.no_grad()
    def stats(self) -> dict:
        """Codes used and perplexity since the last reset (in eval mode with
        ``count_usage_in_eval``: since the module was put into eval), and for the last batch
        (tensors)."""
        usage = self.eval_usage if not self.training and self.count_usage_in_eval else self.usage
        return {"codes_used": (usage > 0).sum(), "perplexity": perplexity(usage),
                "batch_codes_used": (self.batch_usage > 0).sum(), "batch_perplexity": perplexity(self.batch_usage)}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a vector-quantize-pytorch checkpoint: its layout is this module's up to names and a
        # leading codebook axis; the dead-code window starts empty (the peer keeps none)
        errors = peer_vq_keys_to_fastlam_(state_dict, prefix, codebook_size=self.codebook_size, dim=self.dim,
                                          ema=self.ema)
        if errors:
            error_msgs.extend(errors)
            return
        old = prefix + "codebook"
        if old in state_dict and prefix + "codebook.weight" not in state_dict:
            # fastlam < 0.2 stored the codebook as a bare Parameter; its codes were trained, so
            # they count as initialised and start no new schedule.
            cb = state_dict.pop(old)
            if tuple(cb.shape) != (self.codebook_size, self.dim):
                error_msgs.append(f"{old}: the checkpoint's codebook has shape {tuple(cb.shape)}, this "
                                  f"VectorQuantizer expects ({self.codebook_size}, {self.dim}) (codebook_size, dim)")
                return
            state_dict[prefix + "codebook.weight"] = cb
            state_dict.setdefault(prefix + "initted", torch.tensor(True))
            state_dict.setdefault(prefix + "steps_since_reset", torch.zeros((), dtype=torch.long))
        if self.ema and prefix + "codebook.weight" in state_dict:
            state_dict.setdefault(prefix + "cluster_size", torch.ones(self.codebook_size))
            state_dict.setdefault(prefix + "embed_avg", state_dict[prefix + "codebook.weight"].clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._initted_flag = bool(self.initted)


    # ---- forward ----------------------------------------------------------------------
    def forward(self, h: torch.Tensor) -> VQOutput:
        if h.dim() < 1 or h.shape[-1] != self.dim:
            raise ValueError(f"h: expected shape (..., {self.dim}), got {tuple(h.shape)}")
        flat = h.reshape(-1, self.dim)
        training = self.training
        if training and not self.frozen and self._needs_init():
            self.init_codebook(flat)
        x = l2norm(flat) if self.cosine else flat
        codes = self.codes()
        if training and not self.frozen and not self.cosine:
            # EMA updates and resets below edit the codebook in place; the fused backward reads
            # the codes it searched, so it gets its own copy (gradients still reach the weight)
            codes = codes.clone()
        defer = training and self.defer_codebook_edits
        counting = training or self.count_usage_in_eval
        counts = torch.zeros(self.codebook_size, dtype=torch.long, device=h.device) if counting else None
        # Deferred: no usage counting or finiteness check inside the op (both read data-dependent
        # shapes or values back, a graph break); the rows are counted here with static shapes.
        z_q, idx, cb_loss, commit_loss = vector_quantize(x, codes, self.commitment, usage=None if defer else counts,
                                                         check_finite=self.check_finite and not defer,
                                                         backend=self.backend)
        learned = not self.ema and not self.frozen and self.codebook.weight.requires_grad
        if not learned:
            loss = commit_loss
        elif self.peer_loss_value:
            # the peer's one term w * ||z - e||^2 with gradients to both sides: the codebook
            # term's gradient, counted at value 0
            cb_term = self.codebook_weight * cb_loss
            loss = commit_loss + (cb_term - cb_term.detach())
        else:
            loss = commit_loss + self.codebook_weight * cb_loss
        if self.rotation_trick and training and x.requires_grad:
            z_q = _rotation_trick(x, z_q.detach())
        metrics = {"reg/codebook": cb_loss.detach(), "reg/commitment": commit_loss.detach()}
        if training:
            if defer:
                finite = torch.isfinite(x.detach()).all(dim=1)
                counts.index_add_(0, idx, finite.long())
            self.batch_usage.copy_(counts)
            self.usage += counts
            self.seen_since_reset += flat.shape[0]
            self.steps_since_reset += 1
            st = self.stats()
            metrics.update({"reg/codes_used": st["codes_used"].float(), "reg/perplexity": st["perplexity"],
                            "reg/batch_perplexity": st["batch_perplexity"]})
            if defer:
                self._pending = (x.detach(), idx, counts, finite.all())
            else:
                metrics.update(self._edit_codebook(x.detach(), idx, counts))
        elif counting:
            self.batch_usage.copy_(counts)
            self.eval_usage += counts
            st = self.stats()
            metrics.update({"reg/codes_used": st["codes_used"].float(), "reg/perplexity": st["perplexity"],
                            "reg/batch_perplexity": st["batch_perplexity"]})
        if not training and not self.eval_loss:  # the peer's eval loss: 0
            loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        z = z_q.reshape(*h.shape[:-1], self.dim)
        return VQOutput(z, idx.reshape(h.shape[:-1]), loss, metrics)


# ----------------------------------------------------------------------------- residual VQ

# VectorQuantizer arguments that are not vector-quantize-pytorch's (those that are, like decay
# or rotation_trick, mean the same in both); and fastlam's name -> the peer's for one setting.
_FASTLAM_ONLY_VQ_ARGUMENTS = frozenset(inspect.signature(VectorQuantizer.__init__.__wrapped__).parameters) - {
    "self", "codebook_size", "dim"} - frozenset(inspect.signature(VectorQuantizer.vector_quantize_arguments).parameters)
_SAME_MEANING = {"commitment": "commitment_weight", "codebook_weight": "commitment_weight", "ema": "ema_update",
                 "cosine": "use_cosine_sim", "init": "kmeans_init"}

class ResidualVQ(nn.Module):
    """Residual VQ (Zeghidour et al. 2021): ``num_quantizers`` VectorQuantizers in sequence,
    each quantising what the previous ones left (the residual passes on without gradient
    through the codes); the output is the sum of the codes.

    Returns :class:`RVQOutput` ``(z, indices (..., Q), losses (Q,))`` like
    ``vector_quantize_pytorch.ResidualVQ``. Built from the peer's arguments it builds the peer's
    quantizer: each layer is ``VectorQuantizer.from_vector_quantize_kwargs(dim, codebook_size,
    **peer_kwargs)`` (EMA, decay 0.8, ``commitment_weight`` 1, rotation trick, kaiming-uniform
    codes, no scheduled resets, loss 0 in eval). fastlam's own VectorQuantizer arguments
    (``commitment``, ``ema``, ``init``, ``reset_every_steps``, ``backend`` ...) may be passed
    beside them and win; one name of each pair (``commitment`` / ``commitment_weight``, ``ema`` /
    ``ema_update``, ``cosine`` / ``use_cosine_sim``, ``init`` / ``kmeans_init``) only. No
    quantizer dropout, beam search or shared codebook (a ValueError names them).
    ``threshold_dead_code`` alone switches fastlam's scheduled reset on at its default schedule
    (``reset_every_steps=100``).

    Example:
        >>> rvq = ResidualVQ(dim=16, num_quantizers=3, codebook_size=32)
        >>> z, idx, losses = rvq(torch.randn(4, 16))
        >>> idx.shape, losses.shape
        (torch.Size([4, 3]), torch.Size([3]))
    """

    @renamed_arguments(dead_code_threshold="threshold_dead_code")  # one warning, at the caller's line
    def __init__(self, *, dim: int, num_quantizers: int, codebook_size: int, **kwargs):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers: expected >= 1, got {num_quantizers}")
        self.dim, self.num_quantizers, self.codebook_size = dim, num_quantizers, codebook_size
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k in _FASTLAM_ONLY_VQ_ARGUMENTS}
        for fastlam_name, peer_name in _SAME_MEANING.items():
            if fastlam_name in ours and peer_name in kwargs:
                raise TypeError(f"ResidualVQ: got both {fastlam_name!r} (fastlam's) and {peer_name!r} "
                                f"(vector-quantize-pytorch's); pass one")
        if "threshold_dead_code" in ours and not {"reset_every", "reset_every_steps"} & set(ours):
            # fastlam's scheduled reset asked for by its threshold alone: its default schedule,
            # not the peer's "no scheduled reset", which would make the threshold a no-op
            ours["reset_every_steps"] = 100
        args = {**VectorQuantizer.vector_quantize_arguments(dim, codebook_size, **kwargs), **ours}
        self.layers = nn.ModuleList(VectorQuantizer(**args) for _ in range(num_quantizers))

    @property
    def codebooks(self) -> torch.Tensor:
        return torch.stack([vq.codes().detach() for vq in self.layers])

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., Q) indices -> (Q, ..., dim) codes."""
        return torch.stack([vq.get_codes_from_indices(indices[..., i]) for i, vq in enumerate(self.layers)])

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.get_codes_from_indices(indices).sum(0)

    def forward(self, x: torch.Tensor) -> RVQOutput:
        residual, out = x, torch.zeros_like(x)
        indices, losses = [], []
        for vq in self.layers:
            q, idx, loss = vq(residual)
            residual = residual - q.detach()
            out = out + q
            indices.append(idx)
            losses.append(loss)
        return RVQOutput(out, torch.stack(indices, -1), torch.stack(losses))
