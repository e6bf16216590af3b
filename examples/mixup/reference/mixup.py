"""Mixup (Section 3.2): one lambda ~ Beta(alpha, alpha) and one permutation per mini-batch."""

from __future__ import annotations

import numpy as np


def mix_batch(
    x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """x~ = lam x + (1 - lam) x[pi], y~ = lam y + (1 - lam) y[pi]; alpha = 0 is ERM (returned unchanged)."""
    if alpha <= 0.0:
        return x, y, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(x.shape[0])
    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm], lam
