"""Latent-action information regularizers as drop-in modules.

Every regularizer maps the raw output ``h`` of an inverse dynamics model head to a latent
action ``z`` and a scalar loss. ``head_features(action_dim)`` tells the IDM how many outputs
its head needs (the Gaussian one needs mean and log-variance). They accept ``h`` of any
leading shape (..., features) and regularize over all leading positions as one batch.

Use them in another LAM codebase by replacing its quantizer / bottleneck::

    reg = GaussianLatentRegularizer(action_dim=128, beta=5e-5)
    out = reg(idm_head_output)          # (..., 256) -> out.z (..., 128)
    loss = recon_loss + out.loss

:data:`REGULARIZER_KINDS` is the one table of kinds: each names its module and how a
:class:`~fastlam.configs.RegularizerConfig` becomes its constructor's arguments
(:func:`regularizer_from_config`), and owns the choices its module accepts
(:func:`check_regularizer_config`). A new kind is a module here and one entry there.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from ..configs import RegularizerConfig, check_keys, one_of
from ..ops import gaussian_kl, gaussian_sample, gaussian_sample_kl, sparse_regularizer
from ..ops.regularizers import MEAN_TERMS
from .quantizers import VQ_INITS, VectorQuantizer


class RegularizerOutput(NamedTuple):
    z: torch.Tensor | None
    loss: torch.Tensor
    metrics: dict


def _flat(h: torch.Tensor, features: int, name: str = "h") -> torch.Tensor:
    if h.dim() < 2 or h.shape[-1] != features:
        raise ValueError(f"{name}: expected shape (..., {features}), got {tuple(h.shape)}")
    return h.reshape(-1, features)


class UnconstrainedLatent(nn.Module):
    """The ``none`` reference: z = h, no penalty (the upper bound on capacity)."""

    def __init__(self, action_dim: int = 128):
        super().__init__()
        self.action_dim = action_dim

    @staticmethod
    def head_features(action_dim: int) -> int:
        return action_dim

    def forward(self, h: torch.Tensor) -> RegularizerOutput:
        _flat(h, self.action_dim)
        return RegularizerOutput(h, h.new_zeros((), dtype=torch.float32), {})


class SparseLatentRegularizer(nn.Module):
    """Sparse (energy-based) latents: ``VCM(Z) + mean_i E(Z_i)`` of lam-spec.md section 3.

    On CUDA (``backend="auto"``) every term comes from one fused pass over Z (D <= 128).

    Example:
        >>> reg = SparseLatentRegularizer(action_dim=128, l_l1=0.01)
        >>> out = reg(torch.randn(4, 7, 128))
        >>> out.z.shape, out.loss.dim()
        (torch.Size([4, 7, 128]), 0)
    """

    def __init__(self, action_dim: int = 128, l_l1: float = 0.01, l_l2: float = 1.0, l_v: float = 0.1,
                 l_c: float = 0.001, l_m: float = 0.1, eps: float = 1e-4, mean_term: str = "signed",
                 backend: str = "auto"):
        super().__init__()
        self.action_dim = action_dim
        self.coeffs = dict(l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps, mean_term=mean_term)
        self.backend = backend

    @staticmethod
    def head_features(action_dim: int) -> int:
        return action_dim

    def forward(self, h: torch.Tensor) -> RegularizerOutput:
        terms = sparse_regularizer(_flat(h, self.action_dim), **self.coeffs, backend=self.backend)
        metrics = {f"reg/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        return RegularizerOutput(h, terms["loss"], metrics)


class GaussianLatentRegularizer(nn.Module):
    """Noisy (VAE-like) latents: sample ``mu + sigma * eps`` in training, ``mu`` in eval;
    loss ``beta * KL(q || N(0, I))``. log-variance is clamped to [-20, 10] for stability.

    On CUDA (``backend="auto"``) sampling and KL are one fused kernel with in-kernel Philox
    noise (reproducible under ``torch.manual_seed``); an explicit ``noise`` uses the reference.

    Guards against a collapsed z at small scale (all off, 0, is the paper's recipe):

    - ``free_bits``: the penalty is ``beta * sum_j max(KL_j - free_bits, 0)`` with ``KL_j`` dim
      j's KL averaged over the rows (free bits, Kingma et al. 2016: a dim may carry that many
      nats for nothing, so the prior does not pull z to zero before the predictor uses it).
      The fused kernels return only the summed KL, so the per-dim KL is computed with torch
      ops here (the sample still comes from the fused path); ``reg/kl`` stays the plain KL.
    - ``beta_warmup_steps``: beta ramps linearly from 0, ``beta * min(1, k / N)`` at the k-th
      training forward (k from 0). The count k is a buffer (``warmup_step``, saved in the state
      dict, so ``from_checkpoint`` and a resumed run continue the ramp) incremented by each
      forward in training mode with gradients on; it is kept here rather than passed by the
      training loop so every loop (the trainer, the study, a user's own) gets the ramp without
      a new argument. Under gradient accumulation it counts micro-batches.
      Without a warm-up or a delay the buffer does not exist (older checkpoints load unchanged).
    - ``beta_delay_steps``: beta is exactly 0 for this many training forwards (counted by the
      same buffer), then the warm-up's ramp (or the full beta) starts. A ramp is not enough at
      small scale: AdamW normalises each step, so a tiny beta still moves the log-variance at
      the full learning rate wherever the prediction loss does not oppose it, and on the
      study's pan it pulled sigma from 0.05 to 0.42 in 100 steps, before the predictor used z
      (README, method options). With a delay the predictor learns to use z first.
    - ``logvar_offset``: a constant added to the head's log-variance before the clamp; negative
      starts the posterior narrow (sigma = e^(offset / 2) for a head output near 0), so the
      predictor sees the IDM's mean rather than unit noise from the first step. Alone it does
      not stop the collapse (the KL widens the posterior within ~100 steps); with
      ``beta_delay_steps`` it does (measured on the study's pan; README, method options).

    Example:
        >>> reg = GaussianLatentRegularizer(action_dim=128, beta=5e-5)
        >>> reg(torch.randn(4, 7, 256)).z.shape
        torch.Size([4, 7, 128])
    """

    def __init__(self, action_dim: int = 128, beta: float = 5e-5, backend: str = "auto", free_bits: float = 0.0,
                 beta_warmup_steps: int = 0, logvar_offset: float = 0.0, beta_delay_steps: int = 0):
        super().__init__()
        if not float(free_bits) >= 0:
            raise ValueError(f"free_bits: expected a number of nats >= 0, got {free_bits!r}")
        if isinstance(beta_warmup_steps, bool) or not isinstance(beta_warmup_steps, int) or beta_warmup_steps < 0:
            raise ValueError(f"beta_warmup_steps: expected an int >= 0, got {beta_warmup_steps!r}")
        if isinstance(beta_delay_steps, bool) or not isinstance(beta_delay_steps, int) or beta_delay_steps < 0:
            raise ValueError(f"beta_delay_steps: expected an int >= 0, got {beta_delay_steps!r}")
        self.action_dim = action_dim
        self.beta = beta
        self.backend = backend
        self.free_bits = float(free_bits)
        self.beta_warmup_steps = beta_warmup_steps
        self.logvar_offset = float(logvar_offset)
        self.beta_delay_steps = beta_delay_steps
        if self.scheduled:
            self.register_buffer("warmup_step", torch.zeros((), dtype=torch.long))

    @property
    def scheduled(self) -> bool:
        """Whether beta follows a schedule (a delay and / or a warm-up) counted in ``warmup_step``."""
        return bool(self.beta_warmup_steps or self.beta_delay_steps)

    def beta_now(self) -> float | torch.Tensor:
        """The beta the next forward applies: ``beta``, or under a schedule a 0-d tensor on the
        buffer's device (no host sync on CUDA): 0 for the first ``beta_delay_steps`` forwards,
        then ``beta * min(1, (k - delay) / beta_warmup_steps)`` (``beta`` without a warm-up)."""
        if not self.scheduled:
            return self.beta
        k = self.warmup_step.double()
        if not self.beta_warmup_steps:
            return self.beta * (k >= self.beta_delay_steps).double()
        return self.beta * ((k - self.beta_delay_steps).clamp(min=0.0) / self.beta_warmup_steps).clamp(max=1.0)

    def _penalty(self, mu: torch.Tensor, logvar: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """The KL the loss counts: all of it, or each dim's batch mean above ``free_bits``."""
        if not self.free_bits:
            return kl
        acc = torch.float64 if mu.dtype == torch.float64 else torch.float32
        m, lv = mu.to(acc), logvar.to(acc)
        per_dim = (0.5 * (m * m + lv.exp() - 1.0 - lv)).mean(0)
        return (per_dim - self.free_bits).clamp_min(0.0).sum()

    @staticmethod
    def head_features(action_dim: int) -> int:
        return 2 * action_dim

    def posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's raw output (..., 2 * action_dim) -> the posterior's (mu, logvar), each
        (rows, action_dim): the offset added and the clamp applied, as the forward uses them."""
        mu, logvar = _flat(h, 2 * self.action_dim).chunk(2, dim=-1)
        if self.logvar_offset:
            logvar = logvar + self.logvar_offset
        return mu, logvar.clamp(-20.0, 10.0)

    def forward(self, h: torch.Tensor, noise: torch.Tensor | None = None) -> RegularizerOutput:
        mu, logvar = self.posterior(h)
        if self.training and noise is None:
            z, kl = gaussian_sample_kl(mu, logvar, backend=self.backend)
        else:
            kl = gaussian_kl(mu, logvar, backend=self.backend)
            z = gaussian_sample(mu, logvar, noise=noise, backend="torch") if self.training else mu
        z = z.reshape(*h.shape[:-1], self.action_dim)
        beta = self.beta_now()
        metrics = {"reg/kl": kl.detach()}
        if self.scheduled:
            beta = beta.to(kl.dtype)
            metrics["reg/beta"] = beta.detach()
            if self.training and torch.is_grad_enabled():
                self.warmup_step += 1  # after reading beta: the k-th step (from 0) uses k / N
        return RegularizerOutput(z, beta * self._penalty(mu, logvar, kl), metrics)


# ---- the registry: every kind, its module and how a RegularizerConfig becomes its arguments ----
KEY = "model.regularizer"  # where a RegularizerConfig sits in a run config (errors name it)


class RegularizerKind(NamedTuple):
    """One kind of :data:`REGULARIZER_KINDS`."""

    module: type[nn.Module] | None  # None: no latent at all (the IDM is dropped)
    # (config, transitions per video) -> the module's other constructor keyword arguments
    keywords: Callable[[RegularizerConfig, int], dict]
    choices: dict[str, tuple]  # config keys whose allowed values this kind's module owns
    dim_argument: str = "action_dim"  # the module's name for the latent size (the VQ family's is "dim")


def _sparse_keywords(cfg: RegularizerConfig, transitions_per_video: int) -> dict:
    return dict(l_l1=cfg.l_l1, l_l2=cfg.l_l2, l_v=cfg.l_v, l_c=cfg.l_c, l_m=cfg.l_m, mean_term=cfg.mean_term)


def _discrete_keywords(cfg: RegularizerConfig, transitions_per_video: int) -> dict:
    # The paper counts the reset interval in videos; the quantizer counts the latents it sees.
    return dict(codebook_size=cfg.num_codes, commitment=cfg.commitment,
                reset_every=cfg.reset_every_videos * transitions_per_video or None,
                reset_every_steps=cfg.reset_every_steps or None, threshold_dead_code=cfg.dead_code_threshold,
                init=cfg.codebook_init, ema=cfg.ema, decay=cfg.ema_decay, eps=cfg.ema_eps, cosine=cfg.cosine)


REGULARIZER_KINDS: dict[str, RegularizerKind] = {
    "none": RegularizerKind(UnconstrainedLatent, lambda cfg, n: {}, {}),
    "deterministic": RegularizerKind(None, lambda cfg, n: {}, {}),
    "sparse": RegularizerKind(SparseLatentRegularizer, _sparse_keywords, {"mean_term": MEAN_TERMS}),
    "noisy": RegularizerKind(GaussianLatentRegularizer, lambda cfg, n: dict(
        beta=cfg.beta, free_bits=cfg.free_bits, beta_warmup_steps=cfg.beta_warmup_steps,
        logvar_offset=cfg.logvar_offset, beta_delay_steps=cfg.beta_delay_steps), {}),
    "discrete": RegularizerKind(VectorQuantizer, _discrete_keywords, {"codebook_init": VQ_INITS}, dim_argument="dim"),
}
REGULARIZERS = tuple(REGULARIZER_KINDS)


def check_regularizer_config(cfg: RegularizerConfig) -> None:
    """ConfigError naming the key when ``cfg.kind`` is not a registered kind, or a key holds a
    value its module cannot take. Every kind's choices are checked, not only the chosen kind's:
    a value no regularizer accepts is a mistake whatever the kind (the number ranges are
    ``RegularizerConfig.check``'s)."""
    check_keys(cfg, KEY, {"kind": one_of(*REGULARIZER_KINDS)})
    for kind in REGULARIZER_KINDS.values():
        check_keys(cfg, KEY, {key: one_of(*allowed) for key, allowed in kind.choices.items()})


def regularizer_from_config(cfg: RegularizerConfig, action_dim: int, transitions_per_video: int) -> nn.Module | None:
    """The regularizer ``cfg`` describes (checked first), for ``action_dim`` latents and clips of
    ``transitions_per_video`` latent actions; None for ``deterministic``."""
    cfg.check(KEY)
    check_regularizer_config(cfg)
    kind = REGULARIZER_KINDS[cfg.kind]
    if kind.module is None:
        return None
    return kind.module(**{kind.dim_argument: action_dim}, **kind.keywords(cfg, transitions_per_video))


def build_regularizer(kind: str, action_dim: int = 128, **kwargs) -> nn.Module | None:
    """Regularizer by name, with its constructor's keyword arguments; ``deterministic`` returns
    None (the model then has no z at all)."""
    if kind not in REGULARIZER_KINDS:
        raise ValueError(f"regularizer: expected one of {REGULARIZERS}, got {kind!r}")
    entry = REGULARIZER_KINDS[kind]
    return None if entry.module is None else entry.module(**{entry.dim_argument: action_dim}, **kwargs)
