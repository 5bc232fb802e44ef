"""Data integrity: a damaged source is an error naming it, never a smaller dataset that trains.

Each test fails when the protection it covers is removed: the sha256 check of the shipped
archive, reading archives to their end, exact image counts, per-image decode errors, empty
class folders, and caches that record their source.
"""

import gzip
import io
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from kfaclab.data import (
    CIFAR10_CLASSES,
    cache,
    default_cifar10_archive,
    integrity,
    load_dataset,
)
from kfaclab.data.integrity import DataIntegrityError
from kfaclab.data.split import Split
from kfaclab.errors import UsageError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _files(n_train=4, n_test=2, classes=("ant", "bee", "cat")):
    rng = np.random.default_rng(0)
    return {f"{split}/{c}/{i:04d}.png": _png(rng.integers(0, 256, (6, 6, 3)))
            for split, n in (("train", n_train), ("test", n_test)) for c in classes for i in range(n)}


def _tar_bytes(files: dict, mode="w:gz", dirs=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for rel, data in files.items():
            info = tarfile.TarInfo("data/" + rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _load(path, tmp_path):
    return load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / "cache")


def _same(a, b) -> bool:
    return (a.classes == b.classes and np.array_equal(a.train.images, b.train.images)
            and np.array_equal(a.train.labels, b.train.labels) and np.array_equal(a.test.images, b.test.images)
            and np.array_equal(a.test.labels, b.test.labels))


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_corrupted_bytes_anywhere_never_load_silently(tmp_path, mode):
    """Flip one byte at many (seeded) offsets of a small archive: each load either fails with a
    one-line data error or gives exactly the original dataset (a byte that carries no data, such
    as a gzip header's timestamp). Never fewer images, never other pixels."""
    good = _tar_bytes(_files(), mode)
    (tmp_path / "good.tar").write_bytes(good)
    reference = _load(tmp_path / "good.tar", tmp_path)
    rng = np.random.default_rng(0)
    offsets = sorted(set(rng.integers(0, len(good), 60).tolist()) | {0, 10, len(good) // 2, len(good) - 5})
    outcomes = {"error": 0, "identical": 0}
    for k, off in enumerate(offsets):
        bad = bytearray(good)
        bad[off] ^= 0x5A
        path = tmp_path / f"bad{k}.tar"
        path.write_bytes(bytes(bad))
        try:
            ds = load_dataset(f"imagefolder:{path}", cache_dir=tmp_path / f"cache{k}")
        except UsageError as e:
            assert "\n" not in str(e) and path.name in str(e), str(e)
            outcomes["error"] += 1
            continue
        assert _same(ds, reference), f"byte {off} changed the data without an error"
        outcomes["identical"] += 1
    assert outcomes["error"] > len(offsets) // 2  # most bytes matter, and were caught


def test_a_damaged_header_after_the_first_member_is_an_error_not_a_shorter_dataset(tmp_path):
    """tarfile stops at an invalid header after the first member without raising: the bytes
    after it are not zero padding, and that is what check_tar_end catches."""
    good = bytearray(_tar_bytes(_files(), "w"))
    second = 512 + ((len(_files()["train/ant/0000.png"]) + 511) // 512) * 512  # the second member's header
    good[second + 148:second + 156] = b"9999999\0"  # its checksum field: the header becomes invalid
    path = tmp_path / "damaged.tar"
    path.write_bytes(bytes(good))
    with tarfile.open(path) as tf:
        assert len(tf.getmembers()) == 1  # what tarfile alone makes of it: one member, no error
    with pytest.raises(DataIntegrityError, match="damaged"):
        _load(path, tmp_path)


def test_a_gzip_stream_is_read_to_its_end_where_its_crc_is_checked(tmp_path):
    raw = _tar_bytes(_files(), "w")
    body = bytearray(gzip.compress(raw, mtime=0))
    crc = len(body) - 8
    body[crc] ^= 0xFF  # only the CRC is wrong: every member still reads
    path = tmp_path / "crc.tar.gz"
    path.write_bytes(bytes(body))
    with pytest.raises(DataIntegrityError, match="crc.tar.gz"):
        _load(path, tmp_path)


def test_a_truncated_archive_is_an_error(tmp_path):
    good = _tar_bytes(_files(), "w:gz")
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(UsageError, match="cut.tar.gz"):
        _load(path, tmp_path)
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing was cached


# --------------------------------------------------------------------------- images and folders


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_an_undecodable_image_is_named(tmp_path, kind):
    files = _files()
    files["train/bee/0002.png"] = b"\x89PNG not really"
    if kind == "dir":
        for rel, data in files.items():
            (tmp_path / "f" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "f" / rel).write_bytes(data)
        path = tmp_path / "f"
    else:
        path = tmp_path / "f.tar.gz"
        path.write_bytes(_tar_bytes(files))
    with pytest.raises(DataIntegrityError, match="train/bee/0002.png.*cannot be decoded"):
        _load(path, tmp_path)


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_a_class_folder_without_images_is_an_error_not_a_dropped_class(tmp_path, kind):
    files = _files()
    if kind == "dir":
        for rel, data in files.items():
            (tmp_path / "f" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "f" / rel).write_bytes(data)
        (tmp_path / "f" / "train" / "dog").mkdir()
        path = tmp_path / "f"
    else:
        path = tmp_path / "f.tar.gz"
        path.write_bytes(_tar_bytes(files, dirs=["data/train/dog"]))
    with pytest.raises(DataIntegrityError, match="class folder .*dog.* has no images"):
        _load(path, tmp_path)


# --------------------------------------------------------------------------- known datasets


def _splits(per_class_train, per_class_test):
    def split(counts):
        labels = np.repeat(np.arange(len(counts)), counts)
        return Split(np.zeros((len(labels), 3, 2, 2), np.uint8), labels)
    return split(per_class_train), split(per_class_test)


def test_cifar10_counts_are_exact_per_class_and_svhn_in_total():
    train, test = _splits([5000] * 10, [1000] * 10)
    integrity.check_counts("cifar10", "src", train, test, CIFAR10_CLASSES)  # exact: passes
    train, test = _splits([5000] * 9 + [4999], [1000] * 10)
    with pytest.raises(DataIntegrityError, match="5,000 images per class, found truck: 4,999"):
        integrity.check_counts("cifar10", "src", train, test, CIFAR10_CLASSES)
    train, test = _splits([7326] * 9 + [7323], [2604] * 9 + [2596])
    integrity.check_counts("svhn", "src", train, test, tuple(str(i) for i in range(10)))
    train, test = _splits([7326] * 9 + [7322], [2604] * 9 + [2596])
    with pytest.raises(DataIntegrityError, match="73,257 images, found 73,256"):
        integrity.check_counts("svhn", "src", train, test, tuple(str(i) for i in range(10)))


@pytest.fixture(scope="module")
def shipped():
    archive = default_cifar10_archive()
    if not archive.exists():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {archive}")
    return archive


def test_the_shipped_archive_is_checked_by_its_sha256(shipped, tmp_path):
    assert integrity.sha256(shipped) == integrity.CIFAR10_JPEG_SHA256
    bad = tmp_path / "cifar10-jpeg.tar.gz"
    data = bytearray(shipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(DataIntegrityError, match="is not that of the CIFAR-10 JPEG archive"):
        load_dataset("cifar10-jpeg", archive=bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.npz"))


def test_a_corrupt_archive_is_one_line_with_exit_2_from_the_cli(shipped, tmp_path):
    bad = tmp_path / "c.tar.gz"
    data = bytearray(shipped.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "kfaclab", "train", "--dataset", "cifar10-jpeg", "--data-archive",
                        str(bad), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "sha256" in r.stderr and str(bad) in r.stderr


# --------------------------------------------------------------------------- the cache


def test_a_corrupt_cache_is_reported_in_one_line_and_rebuilt(tmp_path, capsys):
    path = tmp_path / "f.tar.gz"
    path.write_bytes(_tar_bytes(_files()))
    first = _load(path, tmp_path)
    [npz] = list((tmp_path / "cache").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:200])  # truncated, as a crash of another writer might leave it
    capsys.readouterr()
    again = _load(path, tmp_path)
    err = capsys.readouterr().err
    assert not again.from_cache and _same(again, first)
    assert err.count("\n") == 1 and "is corrupt" in err and "rebuilding" in err
    assert list((tmp_path / "cache").glob("*.bad-*"))  # moved aside, not deleted
    assert _load(path, tmp_path).from_cache  # the rebuilt cache is used next time


def test_a_cache_is_used_only_for_the_source_it_was_made_of(tmp_path, capsys):
    path = tmp_path / "f.tar.gz"
    path.write_bytes(_tar_bytes(_files()))
    ds = _load(path, tmp_path)
    [npz] = list((tmp_path / "cache").glob("*.npz"))
    # Another source's cache under this name (as a copied cache folder could have it).
    other = Split(ds.train.images[:2], ds.train.labels[:2])
    cache.store(npz, other, ds.test, ds.classes, fingerprint="0123456789abcdef")
    again = _load(path, tmp_path)
    assert not again.from_cache and _same(again, ds)
    assert "another source" in capsys.readouterr().err
    # A changed source has another fingerprint, hence another cache file: decoded anew.
    path.write_bytes(_tar_bytes(_files(n_train=5)))
    changed = _load(path, tmp_path)
    assert not changed.from_cache and len(changed.train) == 15
    shutil.rmtree(tmp_path / "cache")
