import json

import pytest

from kfaclab.train import record


def _valid(tiny_dataset):
    from kfaclab.train import RunConfig, train

    return train(RunConfig(model="mlp:16", batch_size=64, budget="iterations", budget_value=4.0, device="cpu",
                           targets=(0.2,)), dataset=tiny_dataset, progress=False)


def test_schema_accepts_a_real_record_and_names_problems(tiny_dataset):
    rec = _valid(tiny_dataset)
    assert record.validate_record(rec) == []
    assert rec["schema_version"] == record.SCHEMA_VERSION == 1
    assert {"torch", "python", "cpu", "device"} <= set(rec["environment"])
    broken = json.loads(json.dumps(rec))
    del broken["history"][1]["test_accuracy"]
    broken["status"] = "done"
    broken["targets"][0]["reached"] = "yes"
    problems = record.validate_record(broken)
    assert any("history[1]: missing test_accuracy" in p for p in problems)
    assert any("status" in p for p in problems) and any("targets[0].reached" in p for p in problems)
    assert record.validate_record({"kind": "kfaclab.run"})  # missing keys


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    record.write_atomic(path, {"a": 1})

    def interrupted_fsync(fd):  # Ctrl-C after the temp file is written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(record.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        record.write_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


def test_atomic_write_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        record.write_atomic(tmp_path / "x.json", {"loss": float("nan")})
    assert not (tmp_path / "x.json").exists()
