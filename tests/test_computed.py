"""Computed results kept on disk (kfaclab.computed): a value comes back only for the same code,
slot and input bytes; a damaged entry, an unwritable folder or the switch turned off never
changes what is returned."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfaclab import computed, nqm
from kfaclab.results import load_results
from kfaclab.results import study as study_module
from tests.test_results import make_record, write_study


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "computed"
    monkeypatch.setenv(computed.ENV, str(folder))
    return folder


@pytest.fixture
def counted(monkeypatch):
    """How often load_results really reads a study (spec-less folders here)."""
    calls = []
    real = study_module._without_spec

    def counting(directory):
        calls.append(directory)
        return real(directory)

    monkeypatch.setattr(study_module, "_without_spec", counting)
    return calls


def small_study(directory):
    return write_study(directory, [
        make_record("sgd", 32, {"lr": 0.1, "momentum": 0.9}, [(0, 0.1), (50, 0.3), (100, 0.55)]),
        make_record("kfac", 32, {"lr": 0.1, "damping": 0.01}, [(0, 0.1), (30, 0.5), (60, 0.55)]),
    ])


def same(a, b):
    pd.testing.assert_frame_equal(a.runs, b.runs)
    pd.testing.assert_frame_equal(a.evals, b.evals)
    assert (a.name, a.directory, a.grid_keys, a.targets, a.malformed) == \
        (b.name, b.directory, b.grid_keys, b.targets, b.malformed)


def test_a_study_is_read_once_and_then_comes_back_equal(tmp_path, cache, counted):
    d = small_study(tmp_path / "s")
    first = load_results(d)
    second = load_results(d)
    assert len(counted) == 1
    same(first, second)
    assert first.runs is not second.runs  # each caller gets its own copy to change
    assert len(list(cache.glob("*.pkl"))) == 1


def test_a_changed_record_is_read_again_even_with_its_size_and_time_kept(tmp_path, cache, counted):
    d = small_study(tmp_path / "s")
    before = load_results(d)
    path = next(d.glob("sgd-*.json"))
    stat = path.stat()
    text = path.read_text()
    assert '"test_accuracy": 0.55' in text
    path.write_text(text.replace('"test_accuracy": 0.55', '"test_accuracy": 0.56'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = load_results(d)
    assert len(counted) == 2
    sgd = lambda r: r.runs.set_index("optimizer").loc["sgd", "final_accuracy"]  # noqa: E731
    assert sgd(before) == pytest.approx(0.55) and sgd(after) == pytest.approx(0.56)
    assert len(list(cache.glob("*.pkl"))) == 1  # the older entry of the same study is gone


def test_a_new_record_and_a_removed_one_are_seen(tmp_path, cache):
    d = small_study(tmp_path / "s")
    assert len(load_results(d).runs) == 2
    rec = make_record("sgd", 64, {"lr": 0.1, "momentum": 0.9}, [(0, 0.1), (50, 0.5)])
    (d / "sgd-b64-new.json").write_text(json.dumps(rec))
    assert len(load_results(d).runs) == 3
    (d / "sgd-b64-new.json").unlink()
    assert len(load_results(d).runs) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other"])
def test_a_damaged_entry_is_computed_again_and_replaced(tmp_path, cache, counted, damage):
    d = small_study(tmp_path / "s")
    good = load_results(d)
    (entry,) = cache.glob("*.pkl")
    data = entry.read_bytes()
    if damage == "flip":
        i = len(data) - 10
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:  # a well-formed pickle of something else, without the header
        data = pickle.dumps({"not": "results"})
    entry.write_bytes(data)
    again = load_results(d)
    assert len(counted) == 2
    same(good, again)
    assert load_results(d) is not None and len(counted) == 2  # the entry was replaced by a good one


def test_an_unwritable_folder_or_the_switch_off_still_gives_the_results(tmp_path, monkeypatch, counted):
    d = small_study(tmp_path / "s")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(computed.ENV, str(blocker / "computed"))
    a, b = load_results(d), load_results(d)
    same(a, b)
    assert len(counted) == 2
    monkeypatch.setenv(computed.ENV, "off")
    assert computed.folder() is None
    same(a, load_results(d))
    assert len(counted) == 3


def test_other_code_does_not_reuse_an_entry(tmp_path, cache, counted, monkeypatch):
    d = small_study(tmp_path / "s")
    load_results(d)
    load_results(d)
    assert len(counted) == 1
    monkeypatch.setattr(computed, "code_fingerprint", lambda: "another version of kfaclab")
    load_results(d)
    assert len(counted) == 2


def test_the_code_fingerprint_covers_every_module():
    import kfaclab

    root = os.path.dirname(kfaclab.__file__)
    n = sum(f.endswith(".py") for _, _, fs in os.walk(root) for f in fs)
    assert n > 50 and len(computed.code_fingerprint()) == 64


def test_one_entry_per_study_whatever_its_name_and_results_name_their_folder_as_asked(tmp_path, cache, counted,
                                                                                      monkeypatch):
    d = small_study(tmp_path / "runs" / "s")
    absolute = load_results(d)
    monkeypatch.chdir(tmp_path)
    relative = load_results("runs/s")
    monkeypatch.chdir(tmp_path / "runs")
    here = load_results("./s")
    assert len(counted) == 1 and len(list(cache.glob("*.pkl"))) == 1
    assert absolute.directory == d and relative.directory.as_posix() == "runs/s" and here.directory.as_posix() == "s"


def test_only_the_folder_depends_on_how_a_study_is_named(monkeypatch):
    """What makes one entry per study right: loaded (without the cache) by an absolute and by a
    relative path, a real study's results differ in their folder only."""
    import dataclasses

    monkeypatch.setenv(computed.ENV, "off")
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "book")
    a, b = load_results("../runs/resnet-cpu-epochs"), load_results(root / "runs" / "resnet-cpu-epochs")
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "directory":
            assert x.resolve() == y.resolve() and x != y
        elif isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y)
        else:
            assert x == y, f.name


def test_errors_are_not_kept(tmp_path, cache):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.json").write_text("{not json")
    for _ in range(2):
        with pytest.raises(Exception, match="no valid run record"):
            load_results(d)
    assert not list(cache.glob("*.pkl"))


def test_the_nqm_prediction_is_computed_once_per_spectrum(cache, monkeypatch):
    calls = []
    real = nqm.study_curves

    def counting(spec=None, count="first"):
        calls.append((spec, count))
        return real(spec, count)

    monkeypatch.setattr(nqm, "study_curves", counting)
    small = nqm.Spectrum(dim=200, levels=8)
    first = nqm.study_prediction(small)
    assert nqm.study_prediction(small) == first and len(calls) == 1
    other = nqm.Spectrum(dim=200, levels=8, decay=1.5)
    nqm.study_prediction(other)
    assert len(calls) == 2
    monkeypatch.setenv(computed.ENV, "off")
    assert nqm.study_prediction(small) == first and len(calls) == 3  # the same value, computed afresh


def test_the_nqm_curves_are_computed_once_per_spectrum_and_count_and_equal_a_fresh_computation(cache, monkeypatch):
    calls = []
    real = nqm.tuned_steps

    def counting(*a, **k):
        calls.append(k.get("count"))
        return real(*a, **k)

    monkeypatch.setattr(nqm, "tuned_steps", counting)
    small = nqm.Spectrum(dim=200, levels=8)
    first = nqm.study_curves(small)
    n = len(calls)
    again = nqm.study_curves(small)
    assert len(calls) == n  # read back, not computed
    nqm.study_curves(small, count="stays")
    assert len(calls) == 2 * n and calls[-1] == "stays"  # another count is another entry
    monkeypatch.setenv(computed.ENV, "off")
    fresh = nqm.study_curves(small)
    for name in first:
        np.testing.assert_array_equal(again[name]["steps"], fresh[name]["steps"])
        assert again[name]["fit"]["b_crit"] == fresh[name]["fit"]["b_crit"]


def test_the_nqm_chapters_tables_are_read_back_equal_to_a_fresh_computation(cache, monkeypatch):
    from kfaclab import nqm_tables

    calls = []
    real_tuned, real_steps = nqm_tables.tuned_steps, nqm_tables.steps_to_target
    monkeypatch.setattr(nqm_tables, "tuned_steps", lambda *a, **k: calls.append("t") or real_tuned(*a, **k))
    monkeypatch.setattr(nqm_tables, "steps_to_target", lambda *a, **k: calls.append("s") or real_steps(*a, **k))
    settings = [(0.3, 0.9, 1.0, 64), (2.0, 0.99, 0.0, 1)]
    bs = 2.0 ** np.arange(0, 10, 3)

    def tables():
        curves, fits = nqm_tables.curve_table(decays=(1.0,), powers=(0.0,), batch_sizes=bs)
        return curves, fits, nqm_tables.pooling_error(settings), nqm_tables.full_model_reaches(settings)

    first = tables()
    n = len(calls)
    assert n > 0
    again = tables()
    assert len(calls) == n  # all four read back
    nqm_tables.pooling_error(settings[:1])
    assert len(calls) == n + 2  # other arguments: computed (the full and the pooled model)
    monkeypatch.setenv(computed.ENV, "off")
    fresh = tables()
    for a, b, c in zip(first, again, fresh):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
            pd.testing.assert_frame_equal(a, c)
        else:
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
    # the reach is the full model's own: the direct computation agrees
    full = nqm.Spectrum(levels=None)
    target = nqm.STUDY_TARGET_FRACTION * full.initial_loss()
    direct = [np.isfinite(float(real_steps(full, *s, target))) for s in settings]
    assert list(first[3]) == direct


def test_another_pandas_or_numpy_gives_another_fingerprint(monkeypatch):
    from importlib import metadata

    before = computed.code_fingerprint()
    real = metadata.version
    for lib in ("pandas", "numpy"):
        monkeypatch.setattr(metadata, "version", lambda name, lib=lib: "0.0-other" if name == lib else real(name))
        computed.code_fingerprint.cache_clear()
        try:
            assert computed.code_fingerprint() != before, lib
        finally:
            monkeypatch.setattr(metadata, "version", real)
            computed.code_fingerprint.cache_clear()
    assert computed.code_fingerprint() == before
