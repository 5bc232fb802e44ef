"""Adaptive batch size (ABS) and ABS with adversarial training (ABSA), Yao et al. 2018.

The batch grows while training, driven by the top eigenvalue of the loss Hessian: once per
epoch the eigenvalue is measured on a fixed batch; when it has fallen to 1/2 of its reference
value (the landscape is flatter), the batch size and the learning rate double, the
adversarial ratio halves and the reference becomes the new value. After 10 epochs without a
doubling the batch doubles anyway. The batch stops growing at a cap (128 x the base batch by
default, and never more than the training split). ABSA replaces a fraction of every batch (20%
at first) by FGSM examples; that fraction halves at each doubling, is zero once the cap is
reached, and is zero for the second half of training.

Two controls take the curvature signal away and keep everything else: `doubling` (ABS without
the eigenvalue: the batch and learning rate double every `patience_epochs` epochs, on a fixed
schedule) and `doubling-adv` (the same with ABSA's adversarial part). Where ABS's doublings come
from its patience rather than from the eigenvalue, a control reaches what ABS reaches; only a
difference between them is evidence that the curvature signal mattered. The controls measure no
eigenvalue (their runs spend no propagations on it).

`AdaptiveBatchSchedule` is that rule alone, driven by the sequence of measured eigenvalues
(tested on scripted sequences); `run_adaptive` is the training loop around it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kfaclab.errors import UsageError
from kfaclab.hessian import fixed_batch, top_eigenvalue
from kfaclab.train.adversarial import with_adversarial

BATCH_SCHEDULES = ("fixed", "abs", "absa", "doubling", "doubling-adv")
CURVATURE_SCHEDULES = ("abs", "absa")  # the schedules the eigenvalue drives; the others are its controls
ADVERSARIAL_SCHEDULES = ("absa", "doubling-adv")
# Options of the adaptive schedules (RunConfig.schedule_options), with the seed's values.
DEFAULT_OPTIONS = {
    "max_batch_multiple": 128,  # cap: the base batch x this
    "patience_epochs": 10,  # double anyway after this many epochs without a doubling
    "eigen_drop": 2.0,  # double when the eigenvalue falls to 1/eigen_drop of its reference
    "eigen_batch": 128,  # examples of the fixed batch the eigenvalue is measured on
    "eigen_iterations": 10,  # power iterations at most
    "eigen_tolerance": 1e-2,  # relative change that ends the power iteration
    "adv_ratio": 0.2,  # ABSA: fraction of each batch replaced by FGSM examples at the start
    "adv_eps": 0.005,  # ABSA: FGSM step on the [0, 1] pixel scale
}


def resolve_options(schedule: str, given: dict, where: str = "config") -> dict:
    """The schedule's options with defaults filled in; unknown keys and bad values are errors."""
    if schedule not in BATCH_SCHEDULES:
        raise UsageError(f"{where}: batch_schedule must be one of {', '.join(BATCH_SCHEDULES)}, got '{schedule}'")
    if schedule == "fixed":
        if given:
            raise UsageError(f"{where}: schedule_options apply to an adaptive batch_schedule "
                             f"({', '.join(BATCH_SCHEDULES[1:])}), not fixed; drop them")
        return {}
    unknown = sorted(set(given) - set(DEFAULT_OPTIONS))
    if unknown:
        raise UsageError(f"{where}: schedule_options has no {', '.join(unknown)}; known: {', '.join(DEFAULT_OPTIONS)}")
    o = {**DEFAULT_OPTIONS, **given}
    for k, default in DEFAULT_OPTIONS.items():
        v = o[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(default, int) and v != int(v)):
            raise UsageError(f"{where}: schedule_options.{k} must be a {type(default).__name__}, got {v!r}")
        o[k] = type(default)(v)
    if o["max_batch_multiple"] < 1 or o["max_batch_multiple"] & (o["max_batch_multiple"] - 1):
        raise UsageError(f"{where}: schedule_options.max_batch_multiple must be a power of two >= 1, "
                         f"got {o['max_batch_multiple']}")
    for k in ("patience_epochs", "eigen_batch", "eigen_iterations"):
        if o[k] < 1:
            raise UsageError(f"{where}: schedule_options.{k} must be >= 1, got {o[k]}")
    if not o["eigen_drop"] > 1:
        raise UsageError(f"{where}: schedule_options.eigen_drop must be > 1, got {o['eigen_drop']}")
    if not 0 <= o["adv_ratio"] < 1 or not 0 <= o["adv_eps"] <= 1 or not o["eigen_tolerance"] >= 0:
        raise UsageError(f"{where}: schedule_options need 0 <= adv_ratio < 1, 0 <= adv_eps <= 1 and "
                         "eigen_tolerance >= 0")
    if schedule not in ADVERSARIAL_SCHEDULES:
        o["adv_ratio"] = 0.0  # ABS is ABSA without the adversarial part, and doubling is doubling-adv's
    return o


@dataclass
class AdaptiveBatchSchedule:
    """The ABS rule. Call `end_of_epoch` after each epoch with the eigenvalue measured then;
    `batch_size`, `lr_multiplier` and `adv_ratio(epoch)` say what the next epoch uses."""

    base_batch: int
    max_batch: int  # a power-of-two multiple of base_batch
    total_epochs: int
    patience_epochs: int = 10
    eigen_drop: float = 2.0
    initial_adv_ratio: float = 0.0
    curvature: bool = True  # False: the fixed-schedule control (doubles on patience alone)
    multiple: int = 1
    reference: float | None = None
    epochs_since_doubling: int = 0
    log: list = field(default_factory=list)

    def __post_init__(self):
        self._adv = self.initial_adv_ratio
        m = self.max_batch // self.base_batch
        if self.max_batch % self.base_batch or m < 1 or m & (m - 1):
            raise ValueError(f"max_batch {self.max_batch} must be a power-of-two multiple of {self.base_batch}")

    @property
    def batch_size(self) -> int:
        return self.base_batch * self.multiple

    @property
    def lr_multiplier(self) -> float:
        return float(self.multiple)  # the learning rate doubles with the batch

    @property
    def capped(self) -> bool:
        return self.batch_size >= self.max_batch

    def adv_ratio(self, epoch: int) -> float:
        """The adversarial fraction for (0-based) `epoch`: none in the second half."""
        return 0.0 if epoch >= self.total_epochs // 2 else self._adv

    def end_of_epoch(self, epoch: int, eigenvalue: float) -> dict:
        """Apply the rule after (0-based) `epoch`; returns what happened, also appended to `log`."""
        reference, action = self.reference, None
        if not self.capped:
            self.epochs_since_doubling += 1
            # Sharpness is the eigenvalue's size: power iteration returns the one of largest
            # magnitude, which near a minimum is the top one. A failed (non-finite)
            # measurement changes nothing but still counts towards the patience.
            if not self.curvature or not math.isfinite(eigenvalue):
                pass
            elif self.reference is None or not self.reference > 0:
                self.reference = abs(eigenvalue)
            elif abs(eigenvalue) <= self.reference / self.eigen_drop:
                action = "eigenvalue"
                self.reference = abs(eigenvalue)
            if action is None and self.epochs_since_doubling >= self.patience_epochs:
                action = "patience"  # the reference stays: only a flatter landscape moves it
            if action:
                self._double()
        entry = {"epoch": epoch + 1, "eigenvalue": eigenvalue, "reference": reference, "action": action,
                 "batch_size": self.batch_size, "lr_multiplier": self.lr_multiplier,
                 "adv_ratio": self.adv_ratio(epoch + 1)}
        self.log.append(entry)
        return entry

    def _double(self):
        self.multiple *= 2
        self._adv /= 2
        self.epochs_since_doubling = 0
        if self.capped:
            self.multiple = self.max_batch // self.base_batch
            self._adv = 0.0


def max_batch_for(base: int, multiple: int, train_examples: int) -> int:
    """The cap: base x multiple, lowered to the largest base x 2^k the training split holds."""
    cap = base * multiple
    while cap > base and cap > train_examples:
        cap //= 2
    return cap


def evaluation_points(steps: int, period_epochs: float) -> list[int]:
    """Batches of an epoch of `steps` batches after which to evaluate: every `period_epochs`
    (<= 1) of the epoch, and at its end."""
    points = {steps}
    j = 1
    while j * period_epochs < 1 - 1e-9:
        points.add(max(1, round(j * period_epochs * steps)))
        j += 1
    return sorted(points)


def run_adaptive(cfg, model, opt, schedule_lr, train_loader, test_loader, p, st, progress: bool, options: dict,
                 record_eval, mean_std):
    """The training loop of an ABS/ABSA run: whole epochs, the batch size fixed within one.

    `schedule_lr(t)` is the base learning-rate schedule in base-batch iterations (fractional);
    the rate used is that times the schedule's multiplier. `record_eval(train_loss, extra)`
    evaluates and appends a history entry.
    """
    device = train_loader.device
    epochs = int(p["epochs"])
    spe_base = p["steps_per_epoch"]
    max_batch = max_batch_for(cfg.batch_size, options["max_batch_multiple"], train_loader.num_examples)
    curvature = cfg.batch_schedule in CURVATURE_SCHEDULES
    rule = AdaptiveBatchSchedule(cfg.batch_size, max_batch, epochs, options["patience_epochs"],
                                 options["eigen_drop"], options["adv_ratio"], curvature=curvature)
    eig_x, eig_y = fixed_batch(train_loader, min(options["eigen_batch"], train_loader.num_examples), cfg.seed)
    period = min(cfg.eval_every_epochs, epochs / cfg.min_evals)
    mean, std = mean_std
    st.adaptive = {"max_batch": max_batch, "options": options, "epochs": rule.log}
    check_every = 1 if device.type == "cpu" else 10
    reference_loss = None

    def measure():
        e = top_eigenvalue(model, F.cross_entropy, eig_x, eig_y, max_iterations=options["eigen_iterations"],
                           tolerance=options["eigen_tolerance"], seed=cfg.seed)
        # One gradient with its graph, then one product per iteration: 2n propagations each.
        opt.counters["propagations"] += 2 * len(eig_x) * (1 + e.iterations)
        return e

    record_eval(None, {"batch_size": rule.batch_size, "adv_ratio": rule.adv_ratio(0)})
    bar = tqdm(total=epochs, disable=not progress, unit="epoch", dynamic_ncols=True, leave=True)
    loss_sum, losses = torch.zeros((), device=device), 0
    lr = None
    for epoch in range(epochs):
        train_loader.batch_size = rule.batch_size
        steps = len(train_loader)
        evals = set(evaluation_points(steps, period))
        adv = rule.adv_ratio(epoch)
        t_start = time.perf_counter()
        for i, (x, y) in enumerate(train_loader.epoch(epoch), start=1):
            if adv > 0:
                x, k = with_adversarial(model, F.cross_entropy, x, y, adv, options["adv_eps"], mean, std)
                opt.counters["propagations"] += 2 * k
                opt.counters["adversarial_examples"] = opt.counters.get("adversarial_examples", 0) + k
            lr = schedule_lr((epoch + (i - 1) / steps) * spe_base) * rule.lr_multiplier
            opt.set_lr(lr)
            loss = opt.step(x, y)
            st.iteration += 1
            st.examples += len(x)
            st.epoch = epoch + i / steps
            loss_sum += loss
            losses += 1
            if reference_loss is None:
                reference_loss = loss.item()
            if st.iteration % check_every == 0 or i in evals:
                value = loss.item()
                if not math.isfinite(value) or value > cfg.divergence_factor * max(reference_loss, 1e-8):
                    st.train_seconds += time.perf_counter() - t_start
                    st.status = "diverged"
                    st.divergence = {"iteration": st.iteration, "reason": "non-finite loss" if not math.isfinite(value)
                                     else f"loss {value:.4g} > {cfg.divergence_factor} x initial {reference_loss:.4g}"}
                    bar.close()
                    return
            if i in evals:
                extra = {"epoch": epoch + i / steps, "batch_size": rule.batch_size, "adv_ratio": adv, "lr": lr}
                if i == steps:  # the end of the epoch: measure and apply the rule (part of training time)
                    if curvature:
                        e = measure()
                        event = rule.end_of_epoch(epoch, e.value)
                        event["eigen_iterations"], event["eigen_converged"] = e.iterations, e.converged
                        extra["top_eigenvalue"] = e.value
                    else:  # the control: no eigenvalue, the patience alone
                        event = rule.end_of_epoch(epoch, math.nan)
                        event["eigenvalue"] = None  # not measured (a record holds no NaN)
                        event["eigen_iterations"], event["eigen_converged"] = 0, False
                    event["iteration"] = st.iteration
                st.train_seconds += time.perf_counter() - t_start
                record_eval(loss_sum.item() / losses, extra)
                loss_sum.zero_()
                losses = 0
                t_start = time.perf_counter()
        if hasattr(opt, "on_batch_size_change"):
            opt.on_batch_size_change(rule.batch_size / cfg.batch_size)
        bar.update(1)
        bar.set_postfix(batch=rule.batch_size, acc=f"{st.history[-1]['test_accuracy']:.3f}")
    bar.close()
