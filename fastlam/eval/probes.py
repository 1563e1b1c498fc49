"""Probes of the true action from latent actions, fitted on some videos and scored on others.

``ridge_r2``: a linear (ridge) map from features to targets. ``mlp_r2``: a small MLP (the
controller's view of a latent action: from (z_t, s_t), since an action is relative to the
state). Both standardise with the fit rows' statistics and return R^2 on the held-out rows,
``1 - SS_res / SS_tot`` summed over target dimensions (0 = no better than the held-out mean).
``group_split`` makes the fit / score rows disjoint in *groups* (videos / backgrounds), so a
probe cannot score by recognising a background it was fitted on.
"""
from __future__ import annotations

import torch

__all__ = ["group_split", "ridge_r2", "mlp_r2", "r2_score", "pca_features"]


def group_split(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (fit, score) over rows: alternate distinct groups go to each side."""
    uniq = torch.unique(groups)
    if uniq.numel() < 2:
        raise ValueError(f"groups: need at least 2 distinct groups to split, got {uniq.numel()}")
    fit_groups = uniq[::2]
    fit = torch.isin(groups, fit_groups)
    return fit, ~fit


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    pred, target = pred.double().reshape(target.shape[0], -1), target.double().reshape(target.shape[0], -1)
    ss_tot = (target - target.mean(0)).pow(2).sum()
    return float(1 - (pred - target).pow(2).sum() / ss_tot.clamp_min(1e-12))


def _standardise(x_fit, x_test):
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    return (x_fit - mu) / sd, (x_test - mu) / sd


def _check(x_fit, y_fit, x_test, y_test):
    for name, a, b in (("x", x_fit, x_test), ("y", y_fit, y_test)):
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"{name}: expected 2-D (rows, features) fit and test sets with equal widths, "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if x_fit.shape[0] != y_fit.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError("x and y: expected the same number of rows")


RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _ridge_fit_predict(x_fit, y_fit, x_test, lam):
    xf, xt = _standardise(x_fit.double(), x_test.double())
    yf = y_fit.double()
    ym = yf.mean(0)
    n, d = xf.shape
    if d > n:
        # The same ridge solution from the n x n Gram matrix, X^T (X X^T + lam I)^-1 y: a state
        # difference of a 64 px frame at patch 4 has ~25k features for ~500 fit rows, and the
        # d x d system would cost minutes and gigabytes instead of a fraction of a second.
        alpha = torch.linalg.solve(xf @ xf.T + lam * torch.eye(n, dtype=xf.dtype), yf - ym)
        return (xt @ xf.T) @ alpha + ym
    w = torch.linalg.solve(xf.T @ xf + lam * torch.eye(d, dtype=xf.dtype), xf.T @ (yf - ym))
    return xt @ w + ym


def ridge_r2(x_fit, y_fit, x_test, y_test, lam: float | None = None) -> float:
    """Held-out R^2 of a ridge regression on standardised features (intercept free). ``lam``
    None picks it from :data:`RIDGE_LAMBDAS` by 2-fold validation inside the fit rows (the
    held-out rows never choose it)."""
    _check(x_fit, y_fit, x_test, y_test)
    if lam is None:
        half = x_fit.shape[0] // 2
        score = lambda l: (r2_score(_ridge_fit_predict(x_fit[:half], y_fit[:half], x_fit[half:], l), y_fit[half:])
                           + r2_score(_ridge_fit_predict(x_fit[half:], y_fit[half:], x_fit[:half], l), y_fit[:half]))
        lam = max(RIDGE_LAMBDAS, key=score)
    return r2_score(_ridge_fit_predict(x_fit, y_fit, x_test, lam), y_test)


def pca_features(x_fit: torch.Tensor, x_test: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Project both sets on the fit set's first ``k`` principal directions."""
    mean = x_fit.mean(0)
    _, _, vh = torch.linalg.svd((x_fit - mean).double(), full_matrices=False)
    v = vh[:k].T.to(x_fit.dtype)
    return (x_fit - mean) @ v, (x_test - mean) @ v


def _train_mlp(xf, yf, hidden, iterations, lr, weight_decay, seed, val=None, check_every=20):
    """A 2-hidden-layer MLP trained full-batch with AdamW from a seeded init. With ``val``
    (x, y) it also returns the iteration count that scored best there."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(xf.shape[1], hidden), torch.nn.GELU(),
                                  torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, yf.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_it = -float("inf"), iterations
    with torch.enable_grad():
        for it in range(1, iterations + 1):
            loss = torch.nn.functional.mse_loss(net(xf), yf)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if val is not None and (it % check_every == 0 or it == iterations):
                with torch.no_grad():
                    score = r2_score(net(val[0]), val[1])
                if score > best:
                    best, best_it = score, it
    return net, best_it


def mlp_r2(x_fit, y_fit, x_test, y_test, *, hidden: int = 128, iterations: int = 400, lr: float = 3e-3,
           weight_decay: float = 1e-3, seed: int = 0, groups_fit: torch.Tensor | None = None,
           check_every: int = 20) -> float:
    """Held-out R^2 of a 2-hidden-layer MLP trained full-batch with AdamW.

    Early-stopped: with ``groups_fit`` (the fit rows' groups) the fit rows are split again by
    group, an MLP trained on one part picks the iteration count (a multiple of
    ``check_every``, at most ``iterations``) that scores best on the other, and the probe is
    retrained on all fit rows for that many iterations. Why: scored on unseen videos, an MLP
    trained for a fixed budget on a few hundred rows over-fits the backgrounds it saw and lands
    far below 0 (R^2 -2 to -9 in the study before this), which says nothing about the latent.
    The held-out rows never choose anything. Without ``groups_fit``, or with fewer than 4 fit
    groups, the fixed budget is used.
    """
    _check(x_fit, y_fit, x_test, y_test)
    xf, xt = _standardise(x_fit.float(), x_test.float())
    ym, ys = y_fit.float().mean(0), y_fit.float().std(0).clamp_min(1e-6)
    yf = (y_fit.float() - ym) / ys
    steps = iterations
    if groups_fit is not None:
        if groups_fit.shape[0] != xf.shape[0]:
            raise ValueError(f"groups_fit: expected one group per fit row ({xf.shape[0]}), got {groups_fit.shape[0]}")
        if torch.unique(groups_fit).numel() >= 4:
            a, b = group_split(groups_fit)
            _, steps = _train_mlp(xf[a], yf[a], hidden, iterations, lr, weight_decay, seed,
                                  val=(xf[b], yf[b]), check_every=check_every)
    net, _ = _train_mlp(xf, yf, hidden, steps, lr, weight_decay, seed)
    with torch.no_grad():
        pred = net(xt) * ys + ym
    return r2_score(pred, y_test)
