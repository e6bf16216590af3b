"""Test accuracy, expected calibration error (Eq. 12) and the confidence gap of Section 4.3."""

from __future__ import annotations

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Sum over equal-width confidence bins of |B_m|/n * |acc(B_m) - conf(B_m)|; empty bins add nothing."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # bin m holds confidences in ((m-1)/M, m/M]; a confidence of exactly 0 would go to the first bin
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for m in range(bins):
        members = index == m
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def confidence_gap(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean top-class confidence minus accuracy: positive is over-confident, negative under-confident."""
    return float(probs.max(axis=1).mean() - accuracy(probs, labels))
