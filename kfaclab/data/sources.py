"""Where images come from: torchvision datasets, image folders (directory or tar.gz), synthetic data.

Every source returns `(train: Split, test: Split, classes)` with uint8 (N, C, H, W) images.
Decoding happens here and only here; `kfaclab.data.cache` makes sure it happens once.
"""

from __future__ import annotations

import io
import lzma
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from kfaclab.data.integrity import DataIntegrityError, check_tar_end
from kfaclab.data.split import Split
from kfaclab.errors import DataUnavailable, UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm"}
SPLITS = ("train", "test")


# --------------------------------------------------------------------------- torchvision

def load_torchvision(name: str, root: Path, download: bool):
    """CIFAR-10 or SVHN through torchvision (downloaded into `root` when allowed and online)."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "cifar10":
            tr = tvd.CIFAR10(str(root), train=True, download=download)
            te = tvd.CIFAR10(str(root), train=False, download=download)
            to_split = lambda d: Split(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)),
                                       np.asarray(d.targets, dtype=np.int64))
            return to_split(tr), to_split(te), tuple(tr.classes)
        if name == "svhn":
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            to_split = lambda d: Split(np.ascontiguousarray(d.data), np.asarray(d.labels, dtype=np.int64))
            return to_split(tr), to_split(te), tuple(str(i) for i in range(10))
    except (RuntimeError, OSError) as e:  # missing files, or a download that failed (offline)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        how = "downloading is off (--no-download)" if not download else f"the download failed: {reason}"
        raise DataUnavailable(
            f"{name} is not in {root} and {how}; point --data-root at a folder that holds it, "
            f"or use the offline copy with --dataset cifar10-jpeg --data-archive PATH/cifar10-jpeg.tar.gz"
        ) from None
    raise UsageError(f"torchvision has no dataset '{name}' here; choose cifar10 or svhn")


# --------------------------------------------------------------------------- image folders

def decode_image(data: bytes) -> np.ndarray:
    """One encoded image -> uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _safe_parts(name: str) -> tuple[str, ...]:
    """Path parts of an archive member; refuses anything that could escape a folder."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or (p.parts and ":" in p.parts[0]):
        raise UsageError(f"unsafe path '{name}' in the archive (absolute or with '..'); refusing to read it")
    return tuple(part for part in p.parts if part not in ("", "."))


def _place(parts: tuple[str, ...]):
    """(prefix, split, class, file) for .../{train,test}/<class>/<file>, or None for other paths."""
    if len(parts) < 3 or parts[-3] not in SPLITS:
        return None
    if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES or parts[-1].startswith("."):
        return None
    return parts[:-3], parts[-3], parts[-2], parts[-1]


def _class_dir(parts: tuple[str, ...]):
    """(prefix, split, class) for a folder .../{train,test}/<class>, or None."""
    if len(parts) < 2 or parts[-2] not in SPLITS or parts[-1].startswith("."):
        return None
    return parts[:-2], parts[-2], parts[-1]


def _iter_tar(path: Path):
    """Yields ("dir", (prefix, split, class), name) for class folders and ("image", place, name,
    bytes) for images; then reads the archive to its end (integrity.check_tar_end)."""
    with tarfile.open(path, mode="r:*") as tf:
        for m in tf:
            parts = _safe_parts(m.name)
            if m.issym() or m.islnk() or m.isdev():
                raise UsageError(f"archive member '{m.name}' is a link or device; refusing to read {path}")
            if m.isdir():
                folder = _class_dir(parts)
                if folder is not None:
                    yield "dir", folder, m.name
                continue
            if not m.isfile():
                continue
            place = _place(parts)
            if place is not None:
                yield "dir", place[:3], m.name
                yield "image", place, m.name, tf.extractfile(m).read()
        check_tar_end(path, tf)


def _iter_dir(path: Path):
    for dirpath, dirs, files in os.walk(path):
        for d in dirs:
            folder = _class_dir((Path(dirpath) / d).relative_to(path).parts)
            if folder is not None:
                yield "dir", folder, str(Path(dirpath) / d)
        for f in files:
            full = Path(dirpath) / f
            place = _place(full.relative_to(path).parts)
            if place is not None:
                yield "image", place, str(full), full.read_bytes()


def read_imagefolder(path: Path):
    """An ImageFolder layout, `[prefix/]{train,test}/<class>/<image>`, from a folder or a tar(.gz).

    Classes are sorted by name (torchvision's rule), images by file name within a class.
    Images of another size than the first are resized to it (bilinear).
    The archive is read in memory, never extracted, so no member can write outside a folder;
    it is read to its end, so a damaged archive is an error, never a smaller dataset. An image
    that does not decode is an error naming it; so is a class folder without images.
    """
    if not path.exists():
        raise DataUnavailable(f"image folder or archive '{path}' does not exist; give an existing path")
    entries = _iter_dir(path) if path.is_dir() else _iter_tar(path)
    found: dict[tuple, np.ndarray] = {}
    folders: dict[tuple, str] = {}
    prefixes = set()
    try:
        for entry in entries:
            if entry[0] == "dir":
                folders.setdefault(entry[1], entry[2])
                continue
            _, (prefix, split, cls, fname), name, data = entry
            prefixes.add(prefix)
            try:
                found[(split, cls, fname)] = decode_image(data)
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for undecodable bytes
                raise DataIntegrityError(f"{path}: image '{name}' cannot be decoded ({type(e).__name__}: "
                                         f"{' '.join(str(e).split()) or 'no detail'}); replace or remove it") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        detail = " ".join(str(e).split())  # tarfile's message spans lines; the error is one
        raise DataIntegrityError(f"cannot read '{path}' as an image folder or tar archive ({type(e).__name__}: "
                                 f"{detail}); the file is damaged or not an archive: check it or copy it "
                                 "again") from None
    if len(prefixes) > 1:
        raise UsageError(f"'{path}' holds several train/test roots {sorted('/'.join(p) for p in prefixes)}; keep one")
    with_images = {(split, cls) for (split, cls, _) in found}
    empty = sorted(name for (prefix, split, cls), name in folders.items()
                   if (split, cls) not in with_images and (not prefixes or prefix in prefixes))
    if empty:
        raise DataIntegrityError(f"{path}: class folder '{empty[0]}' has no images"
                                 f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; a class without "
                                 "images would be dropped silently: add its images or remove the folder")
    classes = tuple(sorted({cls for (split, cls, _) in found if split == "train"}))
    missing = [s for s in SPLITS if not any(k[0] == s for k in found)]
    if missing:
        raise UsageError(f"'{path}' has no images under {'/'.join(missing)}/<class>/; expected an ImageFolder "
                         "layout with train/ and test/")
    extra = sorted({cls for (split, cls, _) in found} - set(classes))
    if extra:
        raise UsageError(f"'{path}' has test classes {extra} that are not in train/")
    index = {c: i for i, c in enumerate(classes)}
    keys = sorted(found)
    size = found[keys[0]].shape[:2]

    def stack(split):
        ks = [k for k in keys if k[0] == split]
        images = np.stack([_resized(found[k], size) for k in ks]).transpose(0, 3, 1, 2)
        return Split(np.ascontiguousarray(images), np.array([index[k[1]] for k in ks], dtype=np.int64))

    return stack("train"), stack("test"), classes


def _resized(img: np.ndarray, size) -> np.ndarray:
    if img.shape[:2] == tuple(size):
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


# --------------------------------------------------------------------------- synthetic

def make_synthetic(n_train: int = 5000, n_test: int = 1000, num_classes: int = 10, size: int = 32,
                   channels: int = 3, contrast: float = 12.0, noise: float = 64.0, seed: int = 0):
    """Seeded, class-structured images: each class a smooth random pattern of low `contrast`,
    each image that pattern shifted by up to size/8 pixels, with a random brightness offset and
    pixel noise. Learnable, not trivially: a linear model on one batch does not solve it, so
    fast tests of training, augmentation and K-FAC see a real learning curve.
    """
    if min(n_train, n_test, num_classes, size, channels) <= 0:
        raise UsageError("synthetic data needs positive sizes")
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, contrast, size=(num_classes, channels, 4, 4))
    reps = -(-size // 4)
    protos = np.kron(coarse, np.ones((1, 1, reps, reps)))[:, :, :size, :size]

    def draw(n):
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        shift = size // 8
        shifts = rng.integers(-shift, shift + 1, size=(n, 2))
        x = np.stack([np.roll(protos[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shifts)])
        x = 128.0 + x + rng.normal(0.0, 24.0, size=(n, 1, 1, 1)) + rng.normal(0.0, noise, size=x.shape)
        return Split(np.clip(np.rint(x), 0, 255).astype(np.uint8), labels.astype(np.int64))

    return draw(n_train), draw(n_test), tuple(f"class{i}" for i in range(num_classes))
