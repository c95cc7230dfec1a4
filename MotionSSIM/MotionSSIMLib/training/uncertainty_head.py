"""The uncertainty head: a second output fitted on a frozen backbone to predict its own error.

The backbone (a trained ResNet) is not changed. Its pooled features and SSIM outputs are
collected once on corrupted slices it was not trained on; a small MLP (`model.
add_uncertainty_head`) is fitted to them by the Gaussian negative log-likelihood of the
residual r = prediction - truth: loss = log sd + r^2 / (2 sd^2), so that sd follows |r| slice
by slice. A last scale factor, fitted on a held-back part of the slices, makes the interval
ssim +- 2 sd hold the target share of truths (COVERAGE_TARGET), and is folded into the head's
last bias (log sd + log scale), so the checkpoint needs nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..assessment.model import LOG_SD_RANGE, add_uncertainty_head, features, unwrap

COVERAGE_TARGET = 0.95  # a calibrated Gaussian 2-sd interval holds 95.4 % of truths
INTERVAL_SDS = 2.0  # the interval of the `uncertain` flag (inference.UNCERTAIN_SDS)


def collect(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            device: torch.device, amp_dtype: torch.dtype | None = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the backbone once over (images (B, 1, S, S), labels (B,)) batches: (features (N, C),
    raw SSIM outputs (N,), labels (N,)), float32/float64 on the CPU."""
    net = unwrap(net).eval()
    feats, raws, labels = [], [], []
    with torch.inference_mode():
        for images, y in batches:
            x = images.to(device).contiguous(memory_format=torch.channels_last)
            f = features(net, x, amp_dtype)
            feats.append(f.cpu())
            raws.append(net.fc(f).reshape(-1).cpu())
            labels.append(torch.as_tensor(y).reshape(-1).float().cpu())
    return (torch.cat(feats).numpy(), torch.cat(raws).double().numpy(),
            torch.cat(labels).double().numpy())


def residuals(raw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What a user sees as the error: the clamped prediction minus the truth."""
    return np.clip(raw, 0.0, 1.0) - labels


def fit_head(feats: np.ndarray, res: np.ndarray, generator: torch.Generator,
             epochs: int = 400, lr: float = 3e-3, weight_decay: float = 1e-3,
             batch: int = 512) -> nn.Module:
    """The head (as `add_uncertainty_head` builds it) fitted to predict log sd of `res` from
    `feats` by the Gaussian negative log-likelihood. Deterministic for a given generator."""
    holder = nn.Module()
    holder.fc = nn.Linear(feats.shape[1], 1)  # add_uncertainty_head reads the feature width
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        add_uncertainty_head(holder)
    head = holder.uncertainty
    x = torch.from_numpy(np.asarray(feats, np.float32))
    r2 = torch.from_numpy(np.asarray(res, np.float32)) ** 2
    with torch.no_grad():  # start at the overall error size
        head[-1].weight.mul_(0.01)
        head[-1].bias.fill_(0.5 * math.log(float(r2.mean()) + 1e-6))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    n = len(x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            log_sd = head(x[idx]).reshape(-1).clamp(*LOG_SD_RANGE)
            loss = (log_sd + 0.5 * r2[idx] * torch.exp(-2 * log_sd)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return head.eval()


def head_sd(head: nn.Module, feats: np.ndarray) -> np.ndarray:
    """The head's sd on `feats` (clamped as inference clamps it)."""
    with torch.no_grad():
        log_sd = head(torch.from_numpy(np.asarray(feats, np.float32))).reshape(-1)
    return torch.exp(log_sd.clamp(*LOG_SD_RANGE)).double().numpy()


def coverage_scale(sd: np.ndarray, res: np.ndarray, target: float = COVERAGE_TARGET,
                   k: float = INTERVAL_SDS) -> float:
    """The factor s for which |res| <= k * s * sd holds for the share `target` of slices."""
    ratio = np.abs(res) / (k * np.maximum(sd, 1e-12))
    return float(np.quantile(ratio, target))


def fold_scale(head: nn.Module, scale: float) -> nn.Module:
    """Multiply the head's sd by `scale` (log sd + log scale in its last bias)."""
    with torch.no_grad():
        head[-1].bias.add_(math.log(scale))
    return head


def attach(net: nn.Module, head: nn.Module) -> nn.Module:
    """`net` with `head` as its uncertainty head (net is changed and returned)."""
    inner = unwrap(net)
    add_uncertainty_head(inner)
    inner.uncertainty.load_state_dict(head.state_dict())
    inner.uncertainty.to(next(inner.fc.parameters()).device)
    return net


def uncertainty_figures(pred: np.ndarray, sd: np.ndarray, true: np.ndarray,
                        k: float = INTERVAL_SDS, bins: int = 5) -> dict[str, Any]:
    """How well `sd` tracks the error of `pred` (clamped predictions) against `true`:
    Spearman of sd with |error|, the share of truths inside pred +- k sd (coverage; a
    calibrated 2-sd interval holds about 95 %), the mean sd, and per quintile of sd the mean sd
    beside the root-mean-square error (equal in a calibrated model)."""
    from scipy.stats import spearmanr

    pred, sd, true = (np.asarray(a, np.float64) for a in (pred, sd, true))
    err = pred - true
    edges = np.quantile(sd, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, sd, side="right") - 1, 0, bins - 1)
    rows = [{"n": int((which == b).sum()), "mean_sd": float(sd[which == b].mean()),
             "rms_error": float(np.sqrt((err[which == b] ** 2).mean())),
             "coverage": float((np.abs(err[which == b]) <= k * sd[which == b]).mean())}
            for b in range(bins) if (which == b).any()]
    return {"n": int(len(err)),
            "spearman_abs_error": float(spearmanr(sd, np.abs(err))[0]) if sd.std() > 0
            else float("nan"),
            "coverage": float((np.abs(err) <= k * sd).mean()), "interval_sds": k,
            "mean_sd": float(sd.mean()), "rms_error": float(np.sqrt((err ** 2).mean())),
            "bins": rows}
