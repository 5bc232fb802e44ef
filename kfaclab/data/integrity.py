"""Known sources are what they claim to be, before anything is cached.

A few corrupted bytes in an archive can stop tarfile early without an error (an invalid
header after the first member ends the iteration), so a damaged copy of CIFAR-10 could load
with fewer images, be cached and train to the end. Three checks close that:

- the shipped CIFAR-10 JPEG archive is known by its sha256 (../shared/data/README.md);
- every compressed stream is read to its end, where gzip checks its CRC, and the bytes after
  the last member read must be the archive's zero padding (`check_tar_end`);
- the decoded splits of CIFAR-10 and SVHN have exactly their published image counts (per class
  for CIFAR-10: 5,000 train and 1,000 test; in total for SVHN: 73,257 and 26,032).

Each failure is a DataIntegrityError (a UsageError: one line, exit 2) naming the file and what
differs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from kfaclab.errors import UsageError

CIFAR10_JPEG_SHA256 = "a20f75dab73b9c5c6f54e35c84da477e385f34a4615399fdbaef48b0e1e1c437"

# Exact counts of the published datasets: per class where a verified reference gives them.
EXPECTED_COUNTS = {
    "cifar10": {"train": {"per_class": 5000, "classes": 10}, "test": {"per_class": 1000, "classes": 10}},
    "svhn": {"train": {"total": 73257, "classes": 10}, "test": {"total": 26032, "classes": 10}},
}


class DataIntegrityError(UsageError):
    """A data source is not what it should be (corrupt, truncated, or another file)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_cifar10_jpeg(path: Path, digest: str | None = None) -> None:
    """The shipped archive, byte for byte (`digest`: its sha256 when already computed)."""
    got = digest or sha256(path)
    if got != CIFAR10_JPEG_SHA256:
        raise DataIntegrityError(
            f"{path}: sha256 {got[:16]}... is not that of the CIFAR-10 JPEG archive ({CIFAR10_JPEG_SHA256[:16]}..., "
            "../shared/data/README.md); the copy is corrupt or another file: copy it again, or load other data "
            "with --dataset imagefolder:PATH")


def check_tar_end(path: Path, tf) -> None:
    """After iterating a tarfile's members: read the stream to its end (a gzip stream checks its
    CRC there) and require the bytes after the last member to be zero padding. Non-zero bytes
    mean tarfile stopped at a damaged header and members were silently skipped."""
    fileobj = tf.fileobj
    fileobj.seek(tf.offset)
    while True:
        block = fileobj.read(1 << 20)
        if not block:
            break
        if block.count(0) != len(block):
            raise DataIntegrityError(
                f"{path}: the archive has data after member {tf.offset:,} bytes in that tar cannot read (a damaged "
                "header: members after it would be skipped); the file is corrupt: copy it again")


def check_counts(dataset: str, source, train, test, classes) -> None:
    """The exact image counts of `dataset` ("cifar10" or "svhn"), per split (and per class
    where known), of decoded Splits."""
    expected = EXPECTED_COUNTS[dataset]
    for split_name, split in (("train", train), ("test", test)):
        want = expected[split_name]
        counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=want["classes"])
        if len(counts) != want["classes"] or len(classes) != want["classes"]:
            raise DataIntegrityError(f"{source}: {dataset} has {want['classes']} classes, found {len(classes)} "
                                     f"(labels up to {len(counts) - 1}) in {split_name}; the data is not {dataset}")
        if "per_class" in want:
            wrong = {str(classes[i]): int(n) for i, n in enumerate(counts) if n != want["per_class"]}
            if wrong:
                shown = ", ".join(f"{c}: {n:,}" for c, n in list(wrong.items())[:4])
                raise DataIntegrityError(
                    f"{source}: {split_name} should hold {want['per_class']:,} images per class, found {shown}"
                    f"{' ...' if len(wrong) > 4 else ''} ({int(counts.sum()):,} in all); the source is "
                    "incomplete or corrupt: copy it again")
        elif int(counts.sum()) != want["total"]:
            raise DataIntegrityError(f"{source}: {split_name} should hold {want['total']:,} images, found "
                                     f"{int(counts.sum()):,}; the source is incomplete or corrupt: fetch it again")
