"""A dataset in memory: uint8 images (N, C, H, W) and int64 labels, per split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels {self.labels.shape} do not match {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> Split:
        """A class-stratified random subset of n examples (the same n and seed give the same subset).

        Stratified so that a small CPU preset keeps every class at its share of the data.
        """
        if n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self))
        classes, counts = np.unique(self.labels, return_counts=True)
        # Quotas proportional to class frequency, the remainder to the largest fractional parts.
        exact = counts * n / len(self)
        quota = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - quota))[: n - quota.sum()]:
            quota[i] += 1
        keep = np.concatenate([order[self.labels[order] == c][:q] for c, q in zip(classes, quota)])
        keep.sort()
        return Split(self.images[keep], self.labels[keep])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str = ""  # where it came from (path or torchvision root), for the run record
    from_cache: bool = field(default=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images on the [0, 1] scale (for normalisation)."""
        x = self.train.images
        # Accumulate in float64 over chunks: exact enough and no 600 MB float copy of CIFAR.
        c = x.shape[1]
        s = np.zeros(c)
        s2 = np.zeros(c)
        for i in range(0, len(x), 5000):
            chunk = x[i : i + 5000].astype(np.float64) / 255.0
            s += chunk.sum(axis=(0, 2, 3))
            s2 += (chunk**2).sum(axis=(0, 2, 3))
        n = len(x) * x.shape[2] * x.shape[3]
        mean = s / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
        return tuple(mean.tolist()), tuple(std.tolist())
