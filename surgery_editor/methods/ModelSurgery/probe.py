"""The behaviour probe: a 2-class linear softmax classifier on pooled hidden states.

As in the paper: ``W in R^{2 x d}`` plus bias, cross-entropy, Adam (lr 1e-4), batch 16,
9 epochs, a seeded 90/10 train/held-out split. The probe direction is the row of the class
to avoid, ``w = W[1]`` (or ``W[1] - W[0]``, the only thing a softmax actually fixes).
Training touches only the ``(n, d)`` feature matrix, never the LLM.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Dict, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (2, d) float32
    bias: torch.Tensor  # (2,) float32
    train_accuracy: float
    val_accuracy: float
    n_train: int
    n_val: int

    def direction(self, kind: str = "toxic_row") -> torch.Tensor:
        if kind == "toxic_row":
            return self.weight[1].clone()
        if kind == "row_difference":
            return (self.weight[1] - self.weight[0]).clone()
        raise ValueError(f"probe_direction={kind!r} is not valid; choose 'toxic_row' or 'row_difference'")

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() @ self.weight.T + self.bias).argmax(dim=-1)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {"probe.weight": self.weight, "probe.bias": self.bias}

    def info(self) -> Dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not isinstance(v, torch.Tensor)}

    @classmethod
    def from_tensors(cls, tensors: Dict[str, torch.Tensor], info: Dict[str, float]) -> "LinearProbe":
        return cls(weight=tensors["probe.weight"], bias=tensors["probe.bias"], **info)


def min_examples_per_class(val_fraction: float) -> int:
    """The fewest examples of each class a probe is trained on: 2 (one may be held out), and
    with a held-out share, enough that the held-out split is expected to hold one of each
    class (``ceil(1 / val_fraction)``)."""
    return max(2, math.ceil(1 / val_fraction - 1e-9)) if val_fraction > 0 else 2


def check_probe_labels(labels: Sequence[int], val_fraction: float, source: str = "probe data") -> None:
    """Refuse labels a probe cannot be trained and validated on: fewer than
    :func:`min_examples_per_class` examples of class 0 or class 1 (``ValueError`` naming
    ``source``, the counts and ``probe_val_fraction``)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = [int((labels == c).sum()) for c in (0, 1)]
    need = min_examples_per_class(val_fraction)
    if min(counts) < need:
        raise ValueError(f"{source}: {counts[1]} examples of class 1 and {counts[0]} of class 0; a probe needs "
                         f"both classes, at least {need} examples of each (with probe_val_fraction={val_fraction:g}, "
                         "so that its held-out split can hold both classes and its training split keeps both); "
                         "add examples")


def train_probe(features: torch.Tensor, labels: torch.Tensor, *, lr: float = 1e-4, batch_size: int = 16,
                epochs: int = 9, val_fraction: float = 0.1, seed: int = 0) -> LinearProbe:
    """Train the probe; report accuracy on the seeded held-out split. Labels are checked by
    :func:`check_probe_labels`; a training split that misses a class is refused, a held-out
    split that holds one class only is warned about (its accuracy measures one class)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    features = features.float()
    n = features.shape[0]
    if n != labels.shape[0]:
        raise ValueError(f"{n} feature rows but {labels.shape[0]} labels")
    if set(labels.unique().tolist()) - {0, 1}:
        raise ValueError(f"probe labels must be 0 or 1; got {sorted(set(labels.tolist()))}")
    check_probe_labels(labels, val_fraction)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    x_tr, y_tr = features[train_idx], labels[train_idx]
    if len(set(y_tr.tolist())) < 2:
        raise ValueError(f"the probe's training split ({len(train_idx)} of {n} examples) holds class "
                         f"{y_tr[0].item()} only; add examples or lower probe_val_fraction")
    if n_val and len(set(labels[val_idx].tolist())) < 2:
        message = (f"the probe's held-out split ({n_val} examples) holds class {labels[val_idx][0].item()} only, so "
                   "its accuracy measures that class alone; add examples for a meaningful probe accuracy")
        logger.warning(message)
        warnings.warn(message, stacklevel=2)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(features.shape[1], 2)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train_idx), generator=gen)
            for start in range(0, len(order), batch_size):
                b = order[start : start + batch_size]
                opt.zero_grad()
                loss_fn(linear(x_tr[b]), y_tr[b]).backward()
                opt.step()
    probe = LinearProbe(weight=linear.weight.detach().clone(), bias=linear.bias.detach().clone(),
                        train_accuracy=0.0, val_accuracy=float("nan"), n_train=len(train_idx), n_val=n_val)
    probe.train_accuracy = float((probe.predict(x_tr) == y_tr).float().mean())
    if n_val:
        probe.val_accuracy = float((probe.predict(features[val_idx]) == labels[val_idx]).float().mean())
    logger.info("probe: train acc %.3f, held-out acc %.3f (n_train=%d, n_val=%d)",
                probe.train_accuracy, probe.val_accuracy, probe.n_train, probe.n_val)
    return probe
