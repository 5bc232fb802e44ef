import io
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kfaclab.data import CIFAR10_CLASSES, DeviceLoader, load_dataset, sources
from kfaclab.data.loader import crop_and_flip
from kfaclab.data.split import Split
from kfaclab.errors import DataUnavailable, UsageError

# --------------------------------------------------------------------------- sources

def _png(rgb):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _layout():
    """{relative path: pixel array}: 2 classes (named so that sorted != insertion order)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("zebra", "ant"):
            for i in range(n):
                files[f"{split}/{cls}/{i:04d}.png"] = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return files


def _write_dir(root, files):
    for rel, img in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_png(img))


def _write_tar(path, files, prefix="data/", extra=()):
    with tarfile.open(path, "w:gz") as tf:
        for rel, img in files.items():
            data = _png(img)
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_imagefolder_pixels_and_label_order(tmp_path, kind):
    files = _layout()
    if kind == "dir":
        _write_dir(tmp_path / "folder", files)
        path = tmp_path / "folder"
    else:
        path = tmp_path / "data.tar.gz"
        _write_tar(path, files)
    ds = load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "cache")
    assert ds.classes == ("ant", "zebra")  # sorted by name, as torchvision's ImageFolder
    assert ds.train.images.shape == (6, 3, 6, 5) and ds.test.images.shape == (4, 3, 6, 5)
    expected = [files[f"train/{c}/{i:04d}.png"] for c in ("ant", "zebra") for i in range(3)]
    np.testing.assert_array_equal(ds.train.images, np.stack(expected).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 0, 1, 1, 1])


def test_second_load_does_not_decode(tmp_path, monkeypatch):
    path = tmp_path / "data.tar.gz"
    _write_tar(path, _layout())
    calls = []
    real = sources.decode_image
    monkeypatch.setattr(sources, "decode_image", lambda b: calls.append(1) or real(b))
    first = load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "cache")
    assert len(calls) == 10 and not first.from_cache
    second = load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "cache")
    assert len(calls) == 10 and second.from_cache
    np.testing.assert_array_equal(first.train.images, second.train.images)
    # Another cache folder is another cache.
    load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "other")
    assert len(calls) == 20


def test_archive_with_traversal_is_refused(tmp_path):
    path = tmp_path / "evil.tar.gz"
    evil = tarfile.TarInfo("../../escaped.png")
    data = _png(np.zeros((2, 2, 3)))
    evil.size = len(data)
    _write_tar(path, _layout(), extra=[(evil, data)])
    with pytest.raises(UsageError, match="unsafe path"):
        load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "cache")
    assert not (tmp_path.parent / "escaped.png").exists()


def test_archive_with_link_is_refused(tmp_path):
    path = tmp_path / "link.tar.gz"
    link = tarfile.TarInfo("data/train/ant/9999.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _write_tar(path, _layout(), extra=[(link, None)])
    with pytest.raises(UsageError, match="link"):
        load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "cache")


def test_images_of_other_sizes_are_resized(tmp_path):
    files = _layout()
    files["train/zebra/0009.png"] = np.full((12, 10, 3), 200, dtype=np.uint8)
    _write_dir(tmp_path / "f", files)
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", cache_dir=tmp_path / "cache")
    assert ds.train.images.shape == (7, 3, 6, 5)
    assert (ds.train.images[-1] == 200).all()


def test_missing_and_unknown_datasets(tmp_path):
    with pytest.raises(DataUnavailable, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataUnavailable, match="--data-archive"):
        load_dataset("cifar10-jpeg", archive=tmp_path / "missing.tar.gz")
    with pytest.raises(UsageError, match="choose from cifar10, svhn"):
        load_dataset("mnist")


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_torchvision_offline_and_missing_names_the_fix(tmp_path, name):
    with pytest.raises(DataUnavailable) as e:
        load_dataset(name, data_root=tmp_path / "empty", cache_dir=tmp_path / "cache", download=False)
    msg = str(e.value)
    assert "--data-root" in msg and "cifar10-jpeg" in msg and "\n" not in msg


def test_synthetic_is_seeded_and_balanced():
    a = sources.make_synthetic(n_train=100, n_test=30, seed=3)
    b = sources.make_synthetic(n_train=100, n_test=30, seed=3)
    c = sources.make_synthetic(n_train=100, n_test=30, seed=4)
    np.testing.assert_array_equal(a[0].images, b[0].images)
    assert not np.array_equal(a[0].images, c[0].images)
    assert a[0].images.shape == (100, 3, 32, 32) and a[0].images.dtype == np.uint8
    assert np.bincount(a[0].labels).tolist() == [10] * 10


def test_stratified_subset():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    split = Split(np.zeros((100, 1, 2, 2), np.uint8), labels)
    sub = split.subset(50, seed=0)
    assert len(sub) == 50
    assert np.bincount(sub.labels).tolist() == [20, 15, 10, 5]
    np.testing.assert_array_equal(sub.labels, split.subset(50, seed=0).labels)


# --------------------------------------------------------------------------- the JPEG archive

def test_cifar10_jpeg_archive(cifar10_jpeg):
    ds, archive, cache = cifar10_jpeg
    assert ds.classes == CIFAR10_CLASSES  # sorted names = CIFAR-10 label indices 0..9
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.train.labels).tolist() == [5000] * 10
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    # Labels follow content: ships and airplanes sit on blue water and sky, frogs and deer on
    # green and brown ground. A scrambled label order would erase this.
    blue_minus_green = lambda c: (ds.train.images[ds.train.labels == c][:, 2].mean()
                                  - ds.train.images[ds.train.labels == c][:, 1].mean())
    for sky in (0, 8):
        for ground in (4, 6):
            assert blue_minus_green(sky) > blue_minus_green(ground) + 5
    mean, std = ds.channel_stats()  # CIFAR-10's well-known statistics, within JPEG loss
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=0.01)
    np.testing.assert_allclose(std, (0.2470, 0.2435, 0.2616), atol=0.01)
    again = load_dataset("cifar10-jpeg", archive=archive, cache_dir=cache)
    assert again.from_cache


# --------------------------------------------------------------------------- the loader

def _split(n=10, c=3, h=4, w=4, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, c, h, w), dtype=np.uint8), np.arange(n, dtype=np.int64))


@pytest.mark.parametrize("n,b,drop_last,expected", [(10, 3, True, 3), (10, 3, False, 4), (9, 3, True, 3),
                                                     (9, 3, False, 3), (10, 10, True, 1)])
def test_batches_per_epoch(n, b, drop_last, expected):
    loader = DeviceLoader(_split(n), b, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, drop_last=drop_last)
    batches = list(loader.epoch(0))
    assert len(loader) == expected == len(batches)
    sizes = [len(y) for _, y in batches]
    if drop_last:
        assert sizes == [b] * expected
    else:
        assert sum(sizes) == n and all(s == b for s in sizes[:-1])


def test_epoch_visits_each_example_once_and_shuffles_deterministically():
    loader = DeviceLoader(_split(10), 4, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, seed=7)
    seen = lambda e: torch.cat([y for _, y in loader.epoch(e)]).tolist()
    assert sorted(seen(0)) == list(range(10))
    assert seen(0) == seen(0)  # same seed and epoch: same order
    assert seen(0) != seen(1)  # a new permutation each epoch
    other = DeviceLoader(_split(10), 4, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, seed=8)
    assert [y.tolist() for _, y in other.epoch(0)] != [y.tolist() for _, y in loader.epoch(0)]


def test_normalisation_matches_numpy():
    split = _split(6)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    x, y = next(iter(DeviceLoader(split, 6, mean=mean, std=std)))
    expected = (split.images / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert y.tolist() == list(range(6))


def _reference_crop_flip(images, idx, padding, generator):
    """torchvision's per-image RandomCrop(padding) + RandomHorizontalFlip, same random draws."""
    n = len(idx)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    h, w = images.shape[2:]
    out = []
    for k, i in enumerate(idx.tolist()):
        img = F.pad(images[i], (padding,) * 4)
        dy, dx = offsets[0, k].item(), offsets[1, k].item()
        img = img[:, dy:dy + h, dx:dx + w]
        out.append(img.flip(2) if flips[k] else img)
    return torch.stack(out)


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_and_flip_equals_per_image_reference(padding):
    images = torch.from_numpy(_split(16, c=3, h=7, w=5).images)
    idx = torch.tensor([3, 0, 15, 7, 7, 9, 1, 2, 11, 4])
    padded = F.pad(images, (padding,) * 4)
    got = crop_and_flip(padded, idx, padding, torch.Generator().manual_seed(5))
    want = _reference_crop_flip(images, idx, padding, torch.Generator().manual_seed(5))
    assert got.shape == (10, 3, 7, 5) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_augmentation_is_seeded_per_epoch_and_keeps_labels():
    split = _split(32, h=8, w=8)
    loader = DeviceLoader(split, 32, mean=(0.0,) * 3, std=(1 / 255,) * 3, augment=True, seed=1)
    (x0, y), (x0_again, _), (x1, _) = next(loader.epoch(0)), next(loader.epoch(0)), next(loader.epoch(1))
    assert torch.equal(x0, x0_again) and not torch.equal(x0, x1)
    # Each augmented image is a crop/flip of its own label's image: its non-padding pixel values
    # all occur in the original.
    originals = torch.from_numpy(split.images).float()
    for img, label in zip(x0, y):
        assert set(img[img != 0].round().tolist()) <= set(originals[label].flatten().tolist())


def test_resolution_downsamples_once():
    loader = DeviceLoader(_split(4, h=8, w=8), 2, mean=(0.5,) * 3, std=(0.25,) * 3, resolution=4, augment=True)
    assert loader.input_shape == (3, 4, 4)
    x, _ = next(iter(loader))
    assert x.shape == (2, 3, 4, 4)


def test_batch_larger_than_split_with_drop_last_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        DeviceLoader(_split(4), 8, mean=(0.5,) * 3, std=(0.25,) * 3, drop_last=True)
