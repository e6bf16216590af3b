"""The one-hidden-layer ReLU MLP of Section 3.1, with a hand-written backward pass."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class MLP:
    """h = relu(W1^T x + b1), z = W2^T h + b2, p = softmax(z); He initialisation, zero biases."""

    def __init__(self, d: int, hidden: int, classes: int, rng: np.random.Generator) -> None:
        self.params = {
            "W1": rng.normal(0.0, np.sqrt(2.0 / d), size=(d, hidden)),
            "b1": np.zeros(hidden),
            "W2": rng.normal(0.0, np.sqrt(2.0 / hidden), size=(hidden, classes)),
            "b2": np.zeros(classes),
        }

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        h = np.maximum(0.0, x @ p["W1"] + p["b1"])
        return softmax(h @ p["W2"] + p["b2"]), h

    def loss_and_grads(
        self, x: np.ndarray, targets: np.ndarray, weight_decay: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Soft-target cross-entropy plus (gamma/2)(|W1|^2 + |W2|^2), Eq. (9); biases are not penalised."""
        p = self.params
        probs, h = self.forward(x)
        b = x.shape[0]
        data_loss = -np.sum(targets * np.log(probs + 1e-12)) / b
        penalty = 0.5 * weight_decay * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))
        dz = (probs - targets) / b
        dh = (dz @ p["W2"].T) * (h > 0)
        grads = {
            "W2": h.T @ dz + weight_decay * p["W2"],
            "b2": dz.sum(axis=0),
            "W1": x.T @ dh + weight_decay * p["W1"],
            "b1": dh.sum(axis=0),
        }
        return float(data_loss + penalty), grads
