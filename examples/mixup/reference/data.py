"""The three synthetic 2-D problems of Section 4.1, generated from the seed alone."""

from __future__ import annotations

import numpy as np


def moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles of radius one: the lower one is the upper one turned by 180 degrees and
    moved by (1, 0.5), so that each reaches into the other's opening (the usual two-moons construction)."""
    labels = rng.integers(0, 2, size=n)
    angle = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    points = np.where(labels[:, None] == 0, upper, lower)
    return points + rng.normal(0.0, noise, size=(n, 2)), labels


def spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two Archimedean spirals of one turn, the second rotated by 180 degrees."""
    labels = rng.integers(0, 2, size=n)
    t = 2.0 * np.pi * np.sqrt(rng.uniform(0.0, 1.0, size=n))
    radius = t / (2.0 * np.pi)
    points = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    points[labels == 1] *= -1.0
    return points + rng.normal(0.0, noise, size=(n, 2)), labels


def blobs(n: int, classes: int, radius: float, std: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced isotropic Gaussians centred evenly on a circle."""
    labels = np.arange(n) % classes
    angles = 2.0 * np.pi * np.arange(classes) / classes
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres[labels] + rng.normal(0.0, std, size=(n, 2)), labels


def load(name: str, seed: int, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Shuffle, split into train/test and standardise with the training split's statistics."""
    rng = np.random.default_rng([seed, 1])
    n = cfg["n_train"] + cfg["n_test"]
    if name == "moons":
        x, y = moons(n, cfg["moons_noise"], rng)
    elif name == "spirals":
        x, y = spirals(n, cfg["spirals_noise"], rng)
    elif name == "blobs":
        x, y = blobs(n, cfg["blobs_classes"], cfg["blobs_radius"], cfg["blobs_std"], rng)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    order = rng.permutation(n)
    x, y = x[order], y[order]
    train, test = slice(0, cfg["n_train"]), slice(cfg["n_train"], n)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test], int(y.max()) + 1
