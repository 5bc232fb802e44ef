"""`precision: auto` (the default): the fast path (bf16 autocast, channels-last) for convolutional
models on devices with native bf16, float32 elsewhere; decided when the config is built, so the
config, its run id and its record hold what ran, and the MLP studies' ids do not move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfaclab.cli import build_parser
from kfaclab.cli.train import _train_config
from kfaclab.errors import UsageError
from kfaclab.train import RunConfig, precision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bf16_device(monkeypatch):
    """Pretend the device has (True) or lacks (False) native bf16, whatever this machine has."""
    def set_to(value: bool):
        monkeypatch.setattr(precision, "native_bf16", lambda device: value)
    return set_to


@pytest.mark.parametrize("model,optimizer,expected", [
    ("resnet8", "sgd", ("bf16", True)),
    ("resnet20x0.5", "kfac", ("bf16", True)),
    ("c1", "adam", ("bf16", True)),
    ("mlp:256", "sgd", ("fp32", False)),  # the MLP: float32
    ("mlp", "kfac", ("fp32", False)),
    ("resnet8", "trcg", ("fp32", False)),  # TRCG's trust-region ratio needs full precision
])
@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_the_fast_path_for_convolutional_models_on_any_machine(bf16_device, model, optimizer, expected,
                                                                         native):
    """The choice depends on the config alone: a spec names the same runs on every machine that
    reads it (CI without AVX-512 BF16 finds this CPU's records; the merging machine a GPU's)."""
    bf16_device(native)
    hp = {} if optimizer == "trcg" else {"lr": 0.1}
    cfg = RunConfig.from_dict({"model": model, "optimizer": optimizer, "hparams": hp})
    assert (cfg.precision, cfg.channels_last) == expected
    assert RunConfig(model=model, optimizer=optimizer, hparams=hp).precision == expected[0]  # the default is auto
    assert RunConfig(model=model, optimizer=optimizer, hparams=hp, device="cuda").precision == expected[0]


@pytest.mark.parametrize("given,expected", [
    ({"precision": "fp32"}, ("fp32", False)),
    ({"precision": "bf16"}, ("bf16", False)),  # as before auto: channels-last only when asked
    ({"precision": "fp32", "channels_last": True}, ("fp32", True)),
    ({"precision": "auto", "channels_last": False}, ("bf16", False)),
    ({"channels_last": None}, ("bf16", True)),
])
def test_explicit_settings_are_kept(bf16_device, given, expected):
    bf16_device(True)
    cfg = RunConfig.from_dict({"model": "resnet8", **given})
    assert (cfg.precision, cfg.channels_last) == expected


def test_the_config_and_its_id_hold_what_ran_never_auto(bf16_device):
    bf16_device(True)
    auto = RunConfig.from_dict({"model": "resnet8", "optimizer": "kfac"})
    d = auto.to_dict()
    assert d["precision"] == "bf16" and d["channels_last"] is True
    again = RunConfig.from_dict(d)  # a record's config rebuilt elsewhere names the same run
    assert again.run_id() == auto.run_id()
    explicit = RunConfig.from_dict({"model": "resnet8", "optimizer": "kfac", "precision": "bf16",
                                    "channels_last": True})
    assert explicit.run_id() == auto.run_id()
    bf16_device(False)  # a machine without native bf16 reads the same spec as the same runs
    assert RunConfig.from_dict({"model": "resnet8", "optimizer": "kfac"}).run_id() == auto.run_id()


def test_committed_mlp_records_keep_their_ids_under_auto(bf16_device):
    """Records written before `auto` existed have no precision in their id; an MLP config that
    leaves precision out (auto) must name the same run, or every study would re-run."""
    bf16_device(True)
    records = [p for study in ("miniature3", "cpu") for p in sorted((ROOT / "runs" / study).glob("*.json"))[:3]]
    assert records, "the committed MLP records are missing"
    for path in records:
        rec = json.loads(path.read_text())
        cfg = {k: v for k, v in rec["config"].items() if k not in ("precision", "channels_last")}
        assert RunConfig.from_dict(cfg).run_id() == rec["run_id"], path.name


def test_cli_train_flags_choose_the_arithmetic(bf16_device):
    bf16_device(True)
    parser = build_parser()

    def config(*flags):
        return _train_config(parser.parse_args(["train", "--model", "resnet8", *flags]))
    assert (config().precision, config().channels_last) == ("bf16", True)
    assert (config("--precision", "fp32").precision, config("--precision", "fp32").channels_last) == ("fp32", False)
    c = config("--precision", "bf16", "--channels-last", "on")
    assert (c.precision, c.channels_last) == ("bf16", True)
    c = config("--channels-last", "off")
    assert (c.precision, c.channels_last) == ("bf16", False)


def test_an_unknown_precision_is_still_a_one_line_error():
    with pytest.raises(UsageError, match="precision must be one of fp32, bf16"):
        RunConfig.from_dict({"model": "resnet8", "precision": "fp16"})


def test_native_bf16_follows_the_cpu_when_there_is_no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for has in (True, False):
        monkeypatch.setattr(precision, "_cpu_has_bf16", lambda has=has: has)
        assert precision.native_bf16("cpu") is has and precision.native_bf16("auto") is has
    assert precision.native_bf16("cuda") is False  # asked for but absent: validate/resolve_device say so


def test_every_committed_record_rebuilds_to_its_own_id():
    """A record's config, read back (RunConfig.from_record), names the run it came from: also
    records made before `auto` existed, whose config lacks precision (a ResNet-20 of
    runs/gpu-calibration ran in float32 then; auto would make it bf16 now)."""
    paths = [p for p in (ROOT / "runs").glob("*/*.json") if not p.name.endswith(".failed.json")]
    checked = 0
    for path in paths:
        rec = json.loads(path.read_text())
        if rec.get("kind") != "kfaclab.run":
            continue
        assert RunConfig.from_record(rec["config"]).run_id() == rec["run_id"], path
        checked += 1
    assert checked > 1000
    old = json.loads((ROOT / "runs" / "gpu-calibration" / "sgd-b128-e3.json").read_text())["config"]
    assert "precision" not in old and RunConfig.from_record(old).precision == "fp32"


def test_cli_config_reads_a_record_as_it_ran(tmp_path, bf16_device):
    bf16_device(True)
    old = json.loads((ROOT / "runs" / "gpu-calibration" / "sgd-b128-e3.json").read_text())["config"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    cfg = _train_config(build_parser().parse_args(["train", "--config", str(path)]))
    assert (cfg.precision, cfg.channels_last) == ("fp32", False)


def test_a_bf16_run_on_hardware_that_emulates_it_says_so(bf16_device, tiny_dataset, capsys):
    from kfaclab.train import train

    bf16_device(False)
    cfg = RunConfig(model="resnet8x0.25", batch_size=32, budget="iterations", budget_value=2.0, min_evals=1,
                    eval_batch_size=200, device="cpu", augment=False, hparams={"lr": 0.01})
    rec = train(cfg, dataset=tiny_dataset, progress=False)
    assert rec["config"]["precision"] == "bf16" and "emulated" in rec["resolved"]["arithmetic_note"]
    assert "without native bfloat16" in capsys.readouterr().err
    bf16_device(True)
    assert "arithmetic_note" not in train(cfg, dataset=tiny_dataset, progress=False)["resolved"]
