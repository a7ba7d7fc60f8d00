"""A small multinomial logistic-regression classifier (numpy + scipy L-BFGS) on standardised features."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax


class SoftmaxClassifier:
    """L2-regularised multinomial logistic regression; missing feature values are imputed with the mean."""

    def __init__(self, l2: float = 1e-2) -> None:
        self.l2 = l2

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        x = np.where(np.isfinite(x), x, self.mean)
        return np.hstack([(x - self.mean) / self.scale, np.ones((len(x), 1))])

    def fit(self, x: np.ndarray, labels) -> SoftmaxClassifier:
        """Fit on features `x` (n, d) and their class labels (any hashable values)."""
        x = np.asarray(x, float)
        self.classes, y = np.unique(np.asarray(labels), return_inverse=True)
        self.mean = np.nan_to_num(np.nanmean(x, axis=0))
        self.scale = np.nan_to_num(np.nanstd(x, axis=0), nan=1.0)
        self.scale[self.scale == 0] = 1.0
        design = self._standardise(x)
        onehot = np.eye(len(self.classes))[y]
        shape = (design.shape[1], len(self.classes))

        def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
            weights = flat.reshape(shape)
            logp = log_softmax(design @ weights, axis=1)
            grad = design.T @ (np.exp(logp) - onehot) / len(design) + self.l2 * weights
            return -np.mean(np.sum(onehot * logp, axis=1)) + 0.5 * self.l2 * np.sum(weights ** 2), grad.ravel()

        self.weights = minimize(loss, np.zeros(np.prod(shape)), jac=True, method="L-BFGS-B").x.reshape(shape)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most probable class of each row of `x`."""
        return self.classes[np.argmax(self._standardise(np.asarray(x, float)) @ self.weights, axis=1)]


def cross_validated_accuracy(x: np.ndarray, labels, folds: int = 5, seed: int = 0) -> float:
    """Accuracy of SoftmaxClassifier over `folds` seeded folds (each row predicted once, by a model without it)."""
    labels = np.asarray(labels)
    folds = min(folds, len(labels))
    if folds < 2:
        return float("nan")
    assignment = np.random.default_rng(seed).permutation(len(labels)) % folds
    correct = 0
    for k in range(folds):
        train, test = assignment != k, assignment == k
        correct += int(np.sum(SoftmaxClassifier().fit(x[train], labels[train]).predict(x[test]) == labels[test]))
    return correct / len(labels)
