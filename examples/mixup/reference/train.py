"""One training run (Section 4.2): SGD with heavy-ball momentum on mixed mini-batches, then the test metrics."""

from __future__ import annotations

import numpy as np
from data import load
from metrics import accuracy, confidence_gap, ece
from mixup import mix_batch
from model import MLP


def run(dataset: str, alpha: float, seed: int, cfg: dict, epochs: int) -> dict[str, float]:
    """The seed fixes the data, the split, the initialisation, the batch order and the mixing weights."""
    x_train, y_train, x_test, y_test, classes = load(dataset, seed, cfg["data"])
    rng = np.random.default_rng([seed, 2])
    train_cfg = cfg["training"]
    model = MLP(x_train.shape[1], cfg["model"]["hidden"], classes, rng)
    onehot = np.eye(classes)[y_train]
    velocity = {name: np.zeros_like(value) for name, value in model.params.items()}
    lr, mu, gamma, batch = (
        train_cfg["learning_rate"],
        train_cfg["momentum"],
        train_cfg["weight_decay"],
        train_cfg["batch_size"],
    )
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):  # the last batch is smaller
            idx = order[start : start + batch]
            xb, yb, _ = mix_batch(x_train[idx], onehot[idx], alpha, rng)  # test inputs are never mixed
            _, grads = model.loss_and_grads(xb, yb, gamma)
            for name, grad in grads.items():
                velocity[name] = mu * velocity[name] + grad  # v <- mu v + grad L (Eq. 10)
                model.params[name] -= lr * velocity[name]  # theta <- theta - eta v (Eq. 11)
    probs, _ = model.forward(x_test)
    bins = cfg["experiment"]["ece_bins"]
    return {
        "accuracy": accuracy(probs, y_test),
        "ece": ece(probs, y_test, bins),
        "gap": confidence_gap(probs, y_test),
    }
