"""The full description of one run. Everything a run depends on is a field here, and the
whole config goes into the run record, so a record says exactly how to reproduce it."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field

from kfaclab.errors import UsageError
from kfaclab.train.adaptive import resolve_options
from kfaclab.train.budget import BUDGET_KINDS
from kfaclab.train.schedule import LR_DECAYS, LR_SCALINGS
from kfaclab.train.sequential_eval import EVAL_MODES

# (training, test) images of the datasets known by name, to check subsets and batch sizes before
# any run (kfaclab.data.integrity checks the decoded data against the same counts).
DATASET_SIZES = {"cifar10": (50000, 10000), "cifar10-jpeg": (50000, 10000), "svhn": (73257, 26032),
                 "synthetic": (5000, 1000)}

# Fields that say where things are, not what is computed: left out of the run id.
LOCATION_FIELDS = ("output", "cache_dir", "data_root", "data_archive", "download")
# Fields added after the first runs were recorded, whose default changes nothing: left out of
# the run id at their default, so that the ids of earlier runs stay valid.
LATER_FIELDS = {"noise_scale_batches": 0, "nproc": 1, "batch_schedule": "fixed", "schedule_options": {},
                "micro_batch": None, "measure_top_eigenvalue": False, "precision": "fp32", "channels_last": False,
                "eval_mode": "full"}
# Arithmetic of the forward passes: fp32, or bf16 autocast (forward and loss in bfloat16 where
# torch's autocast lists allow it; parameters, gradients, optimizer state and K-FAC's factors
# and decompositions stay float32). A config asks for one of these or "auto" (the default),
# which kfaclab.train.precision turns into one of them when the config is built.
PRECISIONS = ("fp32", "bf16")
# What a record made before a field existed ran with: the field's value then (RunConfig.from_record).
RECORD_DEFAULTS = {"precision": "fp32", "channels_last": False}


@dataclass
class RunConfig:
    # data
    dataset: str = "synthetic"
    data_root: str | None = None  # torchvision datasets: where they are (or are downloaded to)
    data_archive: str | None = None  # cifar10-jpeg: the archive (default ../shared/data/...)
    cache_dir: str | None = None  # decoded-array cache (default $KFACLAB_CACHE or ~/.cache/kfaclab)
    download: bool = True
    train_subset: int | None = None  # a class-stratified subset of the training split
    test_subset: int | None = None
    resolution: int | None = None  # downsample images to this square size (CPU presets)
    augment: bool = True  # random crop (zero padding) and horizontal flip
    crop_padding: int = 4
    # model and optimizer
    model: str = "mlp"
    optimizer: str = "sgd"
    hparams: dict = field(default_factory=dict)  # optimizer hyperparameters; lr is the base rate
    batch_size: int = 128  # with an adaptive batch_schedule: the base (starting) batch size
    batch_schedule: str = "fixed"  # fixed | abs | absa (Yao et al. 2018) | doubling | doubling-adv (their controls:
    # kfaclab.train.adaptive)
    schedule_options: dict = field(default_factory=dict)  # adaptive schedules' options (adaptive.DEFAULT_OPTIONS)
    micro_batch: int | None = None  # gradient accumulation: examples per forward/backward (None: whole batch)
    # budget
    budget: str = "epochs"  # epochs | iterations | examples | rule
    budget_value: float | None = 1.0  # ignored by "rule"
    rule_b0: int = 128
    rule_e0: float = 100.0
    # learning-rate schedule
    lr_scaling: str = "none"  # none | linear | sqrt, from lr_base_batch_size
    lr_base_batch_size: int = 128
    warmup_epochs: float = 0.0
    lr_decay: str = "cosine"  # constant | cosine | step
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    # evaluation and targets
    eval_every_epochs: float = 1.0
    min_evals: int = 20
    eval_batch_size: int = 1000
    eval_mode: str = "full"  # full | sequential (the full test set only where it can decide a crossing; see
    #                         kfaclab.train.sequential_eval)
    targets: tuple[float, ...] = ()
    target_loss: float | None = None
    divergence_factor: float = 10.0  # running loss above this x the initial loss = diverged
    noise_scale_batches: int = 0  # >= 2: measure the gradient noise scale at each evaluation (0: off)
    measure_top_eigenvalue: bool = False  # the Hessian's top eigenvalue at each evaluation (fixed batch of 128)
    # execution
    precision: str = "auto"  # auto | fp32 | bf16 (autocast of forward passes; see PRECISIONS); auto: resolved
    channels_last: bool | None = None  # model and batches in channels-last order (same values); None: with auto
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    nproc: int = 1  # data-parallel processes (torchrun); the global batch is split among them
    output: str | None = None

    def __post_init__(self):
        # "auto" becomes what runs (kfaclab.train.precision), from the config alone, so that the
        # config, its id and its record say what ran on any machine; an MLP's auto is fp32, so
        # its earlier ids are unchanged.
        from kfaclab.train.precision import resolve

        if isinstance(self.precision, str) and (self.precision == "auto" or self.channels_last is None):
            self.precision, self.channels_last = resolve(self.model, self.optimizer, self.precision,
                                                         self.channels_last)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> RunConfig:
        """Build from plain data (a spec, a notebook's parameters); unknown keys and wrong
        types are errors naming the key, never silently ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(names))}")
        hints = _type_hints(cls)
        values = {k: _coerce(k, v, hints[k], where) for k, v in d.items()}
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    @classmethod
    def from_record(cls, config: dict, where: str = "record") -> RunConfig:
        """The config a run record holds. A record writes every field it knew, so a field it lacks
        came later and took its value of that time: precision fp32 and channels_last false
        before `auto` existed (a spec that leaves them out means auto instead)."""
        return cls.from_dict({**RECORD_DEFAULTS, **config}, where)

    def validate(self, where: str = "config") -> None:
        def bad(key, msg):
            raise UsageError(f"{where}: {key} {msg}")

        from kfaclab.models import check_model_name

        try:
            check_model_name(self.model)
        except UsageError as e:
            bad("model", f"is not valid: {e}")
        if self.dataset not in DATASET_SIZES and not (self.dataset.startswith("imagefolder:")
                                                      and len(self.dataset) > len("imagefolder:")):
            bad("dataset", f"is not valid: unknown dataset '{self.dataset}'; choose from {', '.join(DATASET_SIZES)} "
                "or imagefolder:PATH")
        sizes = DATASET_SIZES.get(self.dataset)
        if sizes is not None:
            for key, n, split in (("train_subset", sizes[0], "training"), ("test_subset", sizes[1], "test")):
                v = getattr(self, key)
                if v is not None and v > n:
                    bad(key, f"{v:,} is more than the {n:,} {split} images of {self.dataset}; use at most {n:,} "
                        "(or leave it out for all)")
            n_train = self.train_subset or sizes[0]
            if self.batch_size > n_train:
                bad("batch_size", f"{self.batch_size:,} is more than the {n_train:,} training examples: an epoch "
                    "would have no full batch; lower the batch size or raise train_subset")

        for key in ("batch_size", "min_evals", "eval_batch_size", "rule_b0", "lr_base_batch_size", "nproc"):
            if getattr(self, key) <= 0:
                bad(key, f"must be positive, got {getattr(self, key)}")
        for key in ("train_subset", "test_subset", "resolution"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                bad(key, f"must be positive, got {v}")
        if self.crop_padding < 0:
            bad("crop_padding", "must be >= 0")
        if self.budget not in BUDGET_KINDS:
            bad("budget", f"must be one of {', '.join(BUDGET_KINDS)}, got '{self.budget}'")
        if self.budget != "rule" and (self.budget_value is None or not self.budget_value > 0):
            bad("budget_value", f"must be positive for a budget in {self.budget}, got {self.budget_value}")
        if not self.rule_e0 > 0:
            bad("rule_e0", "must be positive")
        if self.lr_scaling not in LR_SCALINGS:
            bad("lr_scaling", f"must be one of {', '.join(LR_SCALINGS)}, got '{self.lr_scaling}'")
        if self.lr_decay not in LR_DECAYS:
            bad("lr_decay", f"must be one of {', '.join(LR_DECAYS)}, got '{self.lr_decay}'")
        if self.warmup_epochs < 0:
            bad("warmup_epochs", "must be >= 0")
        if not all(0 < m < 1 for m in self.lr_milestones):
            bad("lr_milestones", "must be fractions of the budget in (0, 1)")
        if not 0 < self.lr_gamma <= 1:
            bad("lr_gamma", "must be in (0, 1]")
        if not 0 < self.eval_every_epochs <= 1:
            bad("eval_every_epochs", "must be in (0, 1]: evaluate at least once per epoch")
        for t in self.targets:
            if not 0 < t <= 1:
                bad("targets", f"must be accuracies in (0, 1], got {t}")
        if self.target_loss is not None and not self.target_loss > 0:
            bad("target_loss", "must be positive")
        if self.noise_scale_batches < 0 or self.noise_scale_batches == 1:
            bad("noise_scale_batches", f"must be 0 (off) or at least 2 batches, got {self.noise_scale_batches}")
        resolve_options(self.batch_schedule, self.schedule_options, where)
        if self.batch_schedule != "fixed" and (self.budget != "epochs" or self.budget_value != int(self.budget_value)):
            bad("budget", f"of an adaptive batch schedule ({self.batch_schedule}) must be a whole number of epochs "
                "(it acts once per epoch); use budget epochs with a whole value")
        if self.nproc > 1 and (self.batch_schedule != "fixed" or self.micro_batch or self.measure_top_eigenvalue
                               or self.noise_scale_batches):
            bad("nproc", "must be 1 with an adaptive batch_schedule, micro_batch, measure_top_eigenvalue or "
                "noise_scale_batches (they run in single-process runs only); drop them or use nproc 1")
        if self.micro_batch is not None and self.micro_batch <= 0:
            bad("micro_batch", f"must be positive (or null for no accumulation), got {self.micro_batch}")
        if not self.divergence_factor > 1:
            bad("divergence_factor", "must be > 1")
        if self.eval_mode not in EVAL_MODES:
            bad("eval_mode", f"must be one of {', '.join(EVAL_MODES)}, got '{self.eval_mode}'")
        if self.eval_mode == "sequential" and (self.nproc > 1 or self.batch_schedule != "fixed"):
            bad("eval_mode", "sequential runs with nproc 1 and a fixed batch schedule only; use eval_mode full")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {', '.join(PRECISIONS)} (or auto), got '{self.precision}'")
        if self.precision != "fp32" and self.optimizer in ("trcg", "strcg"):
            bad("precision", f"must be fp32 for {self.optimizer}: its trust-region ratio and curvature products "
                "need full precision")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", f"must be auto, cpu, cuda or cuda:N, got '{self.device}'")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"], d["targets"] = list(self.lr_milestones), list(self.targets)
        return d

    def run_id(self) -> str:
        """A stable id: a hash of everything that affects the result (not where files are). The
        fields are read as they are (no deep copy: json writes tuples as lists, as to_dict would),
        which makes expanding a large spec several times faster with the same ids."""
        d = {}
        for f in _field_names(type(self)):
            v = getattr(self, f)
            if f in LOCATION_FIELDS or (f in LATER_FIELDS and v == LATER_FIELDS[f]):
                continue
            d[f] = v
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@functools.cache
def _type_hints(cls) -> dict:
    """The dataclass's resolved annotations, once (resolving them compiles each annotation)."""
    return typing.get_type_hints(cls)


@functools.cache
def _field_names(cls) -> tuple:
    return tuple(f.name for f in dataclasses.fields(cls))


def _coerce(key, value, hint, where):
    """Check `value` against the field's annotation; ints are accepted for floats, lists for tuples."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, hint, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: {key} must be a list, got {value!r}")
        return tuple(_coerce(key, v, args[0], where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = origin or hint
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UsageError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
    return value
