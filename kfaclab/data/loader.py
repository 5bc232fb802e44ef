"""The device-resident loader: a whole split on the target device, batches cut by index.

No worker processes and no per-image Python: shuffling is one randperm per epoch, and
augmentation (random crop with zero padding, horizontal flip) and normalisation run on whole
batches on the device. That keeps the data pipeline a few percent of a training step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kfaclab.data.split import Split


def augmentation_draws(generator: torch.Generator, n: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random crop offsets (2, n) in [0, 2p] and flip draws (n,) of n examples, in that order."""
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=generator.device, generator=generator)
    flip = torch.rand(n, device=generator.device, generator=generator) < 0.5
    return offsets, flip


def crop_and_flip(padded: torch.Tensor, idx: torch.Tensor, padding: int, draws,
                  keep: slice | None = None) -> torch.Tensor:
    """Gather examples `idx` of a zero-padded uint8 split (N, C, H + 2p, W + 2p), each cropped at a
    random offset in [0, 2p] x [0, 2p] back to (H, W) and mirrored left-right with probability 1/2.

    Equivalent to torchvision's RandomCrop(size, padding) + RandomHorizontalFlip image by image,
    done as two row selections (whole rows are contiguous memory, so `index_select` copies them
    fast): rows of the crop window first, then, after one transpose, its columns, in mirrored
    order for flipped images. `draws` is a generator (offsets, then flips, drawn here by
    `augmentation_draws`) or such draws made beforehand. `keep` returns only those examples of
    the batch, with the draws the whole batch would get (a data-parallel rank's part of a global
    batch, augmented as in a single process).
    """
    n = len(idx)
    hp, wp = padded.shape[2:]
    h, w = hp - 2 * padding, wp - 2 * padding
    dev = padded.device
    if isinstance(draws, torch.Generator):
        draws = augmentation_draws(draws, n, padding)
    offsets, flip = (t.to(dev) for t in draws)
    if keep is not None:
        idx, offsets, flip = idx[keep], offsets[:, keep], flip[keep]
    n, c = len(idx), padded.shape[1]
    channel = torch.arange(c, device=dev)[None, :, None]
    # Rows (length wp) of the crop window: example idx[i], channel k, padded row dy_i + r.
    rows = ((idx[:, None, None] * c + channel) * hp + offsets[0][:, None, None]
            + torch.arange(h, device=dev))
    x = padded.view(-1, wp).index_select(0, rows.view(-1)).view(n, c, h, wp)
    x = x.transpose(2, 3).contiguous()  # (n, c, wp, h): columns are rows now
    j = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], j.flip(0), j) + offsets[1][:, None]  # (n, w)
    cols = (torch.arange(n, device=dev)[:, None, None] * c + channel) * wp + cols[:, None, :]
    x = x.view(-1, h).index_select(0, cols.view(-1)).view(n, c, w, h)
    return x.transpose(2, 3).contiguous()


def downsample(split: Split, resolution: int) -> Split:
    """The split at resolution x resolution (area averaging, rounded back to uint8)."""
    if tuple(split.images.shape[2:]) == (resolution, resolution):
        return split
    images = torch.from_numpy(np.ascontiguousarray(split.images))
    out = torch.empty((len(images), images.shape[1], resolution, resolution), dtype=torch.uint8)
    for i in range(0, len(images), 4096):  # in chunks: no float copy of the whole split
        small = F.interpolate(images[i : i + 4096].float(), size=(resolution, resolution), mode="area")
        out[i : i + 4096] = small.round_().clamp_(0, 255).to(torch.uint8)
    return Split(out.numpy(), split.labels)


class DeviceLoader:
    """Batches of one split, normalised float32 on `device`.

    Args:
        split: uint8 images (N, C, H, W) and labels.
        batch_size: examples per batch.
        mean, std: per-channel statistics on the [0, 1] scale.
        shuffle: a fresh permutation each epoch, from `seed` and the epoch number, so an
            epoch's batches are the same whether or not the run was resumed. Permutations and
            augmentation draws come from a CPU generator (then copied to `device`), so the same
            seed gives the same batches on every device.
        channels_last: batches in channels-last memory order (NHWC strides; same values), the
            layout convolutions on tensor cores prefer.
        augment: random crop (zero padding `crop_padding`) and horizontal flip.
        drop_last: drop the final partial batch. Then an epoch has exactly N // batch_size
            batches and every batch has batch_size examples; otherwise ceil(N / batch_size).
        resolution: downsample the split once (area averaging) to this square size.
        part: (rank, world size) of data parallelism: each batch of `batch_size` (the global
            batch) is drawn, shuffled and augmented as in one process, and this loader yields
            only its rank's contiguous slice, so the ranks together see every example of an
            epoch once. The global batch must divide evenly.
    """

    def __init__(self, split: Split, batch_size: int, *, mean, std, device="cpu", shuffle: bool = False,
                 augment: bool = False, drop_last: bool = False, seed: int = 0, crop_padding: int = 4,
                 resolution: int | None = None, part: tuple[int, int] = (0, 1), channels_last: bool = False):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        rank, world = part
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(f"a global batch of {batch_size} does not split evenly over {world} ranks")
        self.part = part
        self.channels_last = channels_last
        self.device = torch.device(device)
        if resolution is not None:
            split = downsample(split, resolution)
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        # Augmentation reads from a zero-padded copy made once, not padded batch by batch.
        self._padded = F.pad(self.images, (crop_padding,) * 4) if augment else None
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)).to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.seed, self.crop_padding = seed, crop_padding
        if crop_padding < 0:
            raise ValueError("crop_padding must be >= 0")
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as x * scale + shift.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        if drop_last and len(self.labels) < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {len(self.labels)} examples of the split "
                             "with drop_last: an epoch would have no batch")

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        # In place on the fresh float copy: one allocation per batch, not two.
        x = x_uint8.float().mul_(self._scale).add_(self._shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device="cpu")  # device-independent streams (see `shuffle`)
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return g

    def epoch(self, epoch: int = 0):
        """Yield (inputs, labels) for one epoch."""
        g = self._generator(epoch)
        n = self.num_examples
        order = torch.randperm(n, generator=g).to(self.device) if self.shuffle else None
        bounds = [(i * self.batch_size, min((i + 1) * self.batch_size, n)) for i in range(len(self))]
        if self.augment:
            # The whole epoch's draws at once, batch after batch as a per-batch draw would make
            # them, then one copy to the device: a copy per batch would stall a GPU's queue.
            draws = [augmentation_draws(g, stop - start, self.crop_padding) for start, stop in bounds]
            offsets = torch.cat([o for o, _ in draws], 1).to(self.device) if draws else None
            flips = torch.cat([f for _, f in draws]).to(self.device) if draws else None
        for start, stop in bounds:
            sl = slice(start, stop)
            idx = order[sl] if order is not None else torch.arange(start, stop, device=self.device)
            keep = self._my_part(len(idx))
            if self.augment:
                x = crop_and_flip(self._padded, idx, self.crop_padding, (offsets[:, sl], flips[sl]), keep)
                idx = idx[keep]
            else:
                idx = idx[keep]
                x = self.images[idx]
            yield self.normalize(x), self.labels[idx]

    def _my_part(self, n: int) -> slice:
        rank, world = self.part
        local = n // world
        return slice(rank * local, (rank + 1) * local)

    def __iter__(self):
        return self.epoch(0)
