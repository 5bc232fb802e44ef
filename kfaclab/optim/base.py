"""The one small interface between the training loop and an optimizer.

The loop hands an optimizer a batch and asks for one step; the optimizer owns the forward
and backward passes it needs (one for SGD, an extra one for K-FAC's MC Fisher, many
Hessian-vector products for TRCG). It reports work done as counters, among them
`propagations`: a forward+backward over n examples counts 2n (the unit of Xu et al.).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingOptimizer:
    """Base class: subclasses implement `step`; the learning rate is set by the loop's schedule."""

    name = "base"

    def __init__(self, model: nn.Module, loss_fn: LossFn, hyperparameters: dict):
        self.model, self.loss_fn = model, loss_fn
        self.hyperparameters = dict(hyperparameters)  # recorded in the run JSON as given
        self.counters: dict[str, float] = {"steps": 0, "propagations": 0}
        self.torch_optimizer: torch.optim.Optimizer | None = None

    @staticmethod
    def for_run(h: dict, iterations: int) -> dict:
        """The resolved hyperparameters `h` adapted to a run of `iterations` steps (K-FAC scales its
        update cadence to the run); as given for the others."""
        return h

    def attach_training_data(self, loader) -> None:
        """Optimizers that need more than the batch (TRCG: the full gradient, Hessian samples)
        keep the loop's training loader here; the others ignore it."""

    # Whether the optimizer trains data-parallel: its model is then a DistributedDataParallel
    # wrapper, which all-reduces the loss gradients in backward.
    data_parallel = False

    def attach_distributed(self, ctx) -> None:
        """Called with the kfaclab.distributed.Context when the run has more than one process;
        optimizers with work of their own to spread (K-FAC) override it."""
        if ctx.active and not self.data_parallel:
            from kfaclab.errors import UsageError

            raise UsageError(f"{self.name} does not train data-parallel; use sgd, adam or kfac under torchrun")

    # Gradient accumulation: at most this many examples per forward/backward (None: the batch).
    micro_batch: int | None = None
    # bf16 autocast of forward passes (None: the model's own dtype); see set_precision.
    autocast_dtype: torch.dtype | None = None

    def set_precision(self, precision: str) -> None:
        """'fp32', or 'bf16': forward passes and losses under torch.autocast in bfloat16.
        Only forwards are autocast (torch's recommendation: backward passes follow the forward's
        dtypes); parameters, gradients and the optimizer's own arithmetic stay float32."""
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def forward_context(self):
        """The context of a training forward pass: autocast under bf16, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=self.autocast_dtype)

    def set_micro_batch(self, size: int | None) -> None:
        """Split each batch into chunks of at most `size` examples whose gradients accumulate into
        the batch's: the same update as one pass over the batch (BatchNorm apart: it normalises
        each chunk with that chunk's statistics, as "ghost batches" do)."""
        self.micro_batch = size

    def chunks(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self.micro_batch or self.micro_batch >= len(inputs):
            return [(inputs, targets)]
        return list(zip(inputs.split(self.micro_batch), targets.split(self.micro_batch)))

    def accumulate_loss_backward(self, chunks, n: int, before_backward=None) -> torch.Tensor:
        """Forward and backward of the batch-mean loss over `chunks` (n examples in all), each
        chunk's mean loss weighted by its share of the batch, so the gradients that accumulate are
        the batch's. Under DDP only the last chunk's backward all-reduces. Returns the batch loss."""
        total = None
        for i, (x, y) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with self.forward_context():
                    loss = self.loss_fn(self.model(x), y)
                if len(chunks) > 1:
                    loss = loss * (len(x) / n)
                if before_backward is not None:
                    before_backward()
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def on_batch_size_change(self, ratio_to_base: float) -> None:
        """Called by adaptive batch schedules after an epoch with the batch size over the run's
        base batch size; optimizers with statistics kept across steps (K-FAC) adapt them."""

    def set_lr(self, lr: float) -> None:
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One update on this batch; returns the batch loss before the update (detached)."""
        raise NotImplementedError

    def gradient_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The whole step of an optimizer that needs only the batch gradient (SGD, Adam): one
        forward and backward over the batch (in chunks), then the torch optimizer's update."""
        self.torch_optimizer.zero_grad(set_to_none=True)
        loss = self.accumulate_loss_backward(self.chunks(inputs, targets), len(inputs))
        self.torch_optimizer.step()
        self.counters["steps"] += 1
        self.counters["propagations"] += 2 * len(inputs)
        return loss.detach()

    def report(self) -> dict:
        """What the run record's `optimizer` section says of the run: the counters, and whatever
        else an optimizer measured (K-FAC: how its KL clip acted)."""
        return dict(self.counters)

    def state_dict(self) -> dict:
        return {"torch_optimizer": self.torch_optimizer.state_dict(), "counters": dict(self.counters)}

    def load_state_dict(self, state: dict) -> None:
        self.torch_optimizer.load_state_dict(state["torch_optimizer"])
        self.counters = dict(state["counters"])
