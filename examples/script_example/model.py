"""A bigram language model in numpy: the model both example scripts train (an `inputs` file of
config/studies/script_example.yaml, so editing it reruns both variants).

The model is one table ``W`` (vocab x vocab): the logits of the next token given this one.
"""

import numpy as np


def init(vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Small random logits (float64, vocab x vocab)."""
    return rng.normal(0.0, 0.02, size=(vocab_size, vocab_size))


def loss_and_grad(W: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy (nats/token) of predicting ``y`` from ``x`` and its gradient in ``W``."""
    logits = W[x]                                   # (N, V)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(x)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-300).mean())
    probs[np.arange(n), y] -= 1.0
    grad = np.zeros_like(W)
    np.add.at(grad, x, probs / n)
    return loss, grad


def loss(W: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats/token) without the gradient."""
    logits = W[x]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(x)), y].mean())
