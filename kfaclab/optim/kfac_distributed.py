"""Distributed K-FAC (Ba, Grosse & Martens 2017): factor statistics averaged over ranks, and the
decompositions spread over ranks and over time.

Every `inv_update_freq` steps each layer's running factors A and G are decomposed (eigen or
damped inverses, kfac_layers). Under data parallelism each step's factor statistics are averaged
over the ranks in one all-reduce, and the `distributed` strategy gives each layer an owner
(assign_owners) that decomposes it and broadcasts the result; `stale_inverses` computes the next
decompositions in a background thread while steps use the previous ones. A decomposition that
fails is retried in float64 with jitter, and the layer keeps its plain gradient if that fails too.
"""

from __future__ import annotations

import time

import torch

from kfaclab.distributed import all_reduce_mean_, broadcast_
from kfaclab.optim import kfac_layers as kl


class Distributed:
    """A K-FAC optimizer's work across ranks and time (a mixin of KFAC): statistics, owners,
    background thread, fallbacks."""

    def attach_distributed(self, ctx) -> None:
        """Data parallelism: factors are averaged over ranks, decompositions replicated or
        distributed; MC Fisher labels are drawn from a stream per rank."""
        self.ctx = ctx
        if ctx.active:
            self.generator.manual_seed(self.hyperparameters["seed"] + 1_000_003 * ctx.rank)
        self._owners = assign_owners({n: (l.module) for n, l in self.layers.items()}, ctx.world_size)

    def _average_factors_over_ranks(self):
        """This step's factors averaged over ranks in one all-reduce: for every layer, in a fixed
        order, A and G (zeros where this rank has none) and a count of the ranks that had them."""
        device = next(iter(self.layers.values())).module.weight.device
        parts, counts = [], []
        for layer in self.layers.values():
            has = layer.batch_A is not None and layer.batch_G is not None
            da, dg = kl.factor_dims(layer.module)
            parts += [layer.batch_A if has else torch.zeros(da, da, dtype=self.dtype, device=device),
                      layer.batch_G if has else torch.zeros(dg, dg, dtype=self.dtype, device=device)]
            counts.append(float(has))
        count = torch.tensor(counts, dtype=self.dtype, device=device)
        t0 = time.perf_counter()
        all_reduce_mean_([count] + parts, self.ctx)  # means; x world size gives sums
        self.timings["communication_s"] += time.perf_counter() - t0
        for i, layer in enumerate(self.layers.values()):
            ranks = float(count[i]) * self.ctx.world_size
            if ranks < 0.5:
                layer.batch_A = layer.batch_G = None
                continue
            scale = self.ctx.world_size / ranks  # the mean over the ranks that had the layer
            layer.batch_A, layer.batch_G = parts[2 * i] * scale, parts[2 * i + 1] * scale

    def _decompose_all(self, damping: float):
        """Decompose the running factors. Under data parallelism with the `distributed`
        strategy each rank decomposes the layers it owns and the owners broadcast; with
        `stale_inverses`, an inverse step installs the decompositions computed in the background
        since the previous one and starts the next, so steps use decompositions one update old
        (the first inverse step computes in the foreground: there is nothing older to use)."""
        names = [n for n, l in self.layers.items() if l.A is not None]
        if not self.hyperparameters["stale_inverses"] or self._first_inverse(names):
            self._install(self._share(self._compute(self._mine(names), damping), names))
        else:
            if self._pending is not None:
                t0 = time.perf_counter()
                results = self._pending.result()  # waiting here is decomposition time not hidden
                self.timings["decomposition_s"] += time.perf_counter() - t0
                self._install(self._share(results, self._pending_names))
            snapshot = {n: (self.layers[n].A.clone(), self.layers[n].G.clone()) for n in self._mine(names)}
            self._pending_names = names
            self._pending = self._background().submit(self._compute_from, snapshot, damping)
        self.counters["inverse_updates"] += 1

    def _first_inverse(self, names) -> bool:
        return all(self.layers[n].decomposition is None for n in names) and self._pending is None

    def _mine(self, names) -> list[str]:
        if self.hyperparameters["inverse_strategy"] == "replicated" or not self.ctx.active:
            return list(names)
        return [n for n in names if self._owners[n] == self.ctx.rank]

    def _compute(self, names, damping) -> dict:
        t0 = time.perf_counter()
        out = self._compute_from({n: (self.layers[n].A, self.layers[n].G) for n in names}, damping)
        self.timings["decomposition_s"] += time.perf_counter() - t0
        return out

    def _compute_from(self, factors: dict, damping) -> dict:
        return {n: self._decompose(A, G, damping) for n, (A, G) in factors.items()}

    def _background(self):
        if getattr(self, "_executor", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfac-inverses")
        return self._executor

    def _share(self, results: dict, names) -> dict:
        """With the distributed strategy, every layer's decomposition from its owner, one
        broadcast per owner (a flag per layer says whether its decomposition failed)."""
        if self.hyperparameters["inverse_strategy"] == "replicated" or not self.ctx.active:
            return results
        keys = ("QA", "dA", "QG", "dG") if self.hyperparameters["inverse_method"] == "eigen" else ("A_inv", "G_inv")
        shared = {}
        for owner in range(self.ctx.world_size):
            owned = [n for n in names if self._owners[n] == owner]
            if not owned:
                continue
            tensors, flags = [], []
            for n in owned:
                mine = results.get(n) if owner == self.ctx.rank else None
                flags.append(float(mine is not None))
                for k, shape in zip(keys, self._decomposition_shapes(n, keys)):
                    tensors.append(mine[k] if mine is not None else
                                   torch.zeros(shape, dtype=self.dtype, device=self.layers[n].A.device))
            flag = torch.tensor(flags, dtype=self.dtype, device=tensors[0].device)
            t0 = time.perf_counter()
            broadcast_([flag] + tensors, owner, self.ctx)
            self.timings["communication_s"] += time.perf_counter() - t0
            for i, n in enumerate(owned):
                part = tensors[i * len(keys):(i + 1) * len(keys)]
                shared[n] = dict(zip(keys, part)) if float(flag[i]) == 1.0 else None
        return shared

    def _decomposition_shapes(self, name, keys):
        da, dg = self.layers[name].A.shape[0], self.layers[name].G.shape[0]
        sizes = {"QA": (da, da), "dA": (da,), "QG": (dg, dg), "dG": (dg,), "A_inv": (da, da), "G_inv": (dg, dg)}
        return [sizes[k] for k in keys]

    def _install(self, results: dict):
        for n, d in results.items():
            self.layers[n].decomposition = d

    def _decompose(self, A, G, damping):
        """Decompose in the factor dtype; on failure (non-finite input or output, or an
        eigensolver error) retry in float64 with jitter; if that fails too, return None:
        the layer keeps its plain gradient until the next successful decomposition."""
        for attempt in range(2):
            try:
                if attempt:
                    A, G = _jittered(A), _jittered(G)
                d = self._decompose_once(A, G, damping)
                if all(all_finite(v) for v in d.values()):
                    return {k: v.to(self.dtype) for k, v in d.items()}
            except (RuntimeError, ValueError):  # torch.linalg.LinAlgError is a RuntimeError
                pass
        self.counters["decomposition_failures"] += 1
        return None

    def _decompose_once(self, A, G, damping):
        if not (all_finite(A) and all_finite(G)):
            raise ValueError("non-finite factor")
        if self.hyperparameters["inverse_method"] == "eigen":
            dA, QA = torch.linalg.eigh(A)
            dG, QG = torch.linalg.eigh(G)
            # Factors are PSD; round-off can give tiny negative eigenvalues.
            return {"QA": QA, "dA": dA.clamp_(min=0), "QG": QG, "dG": dG.clamp_(min=0)}
        A_inv, G_inv = kl.damped_inverses(A, G, damping)
        return {"A_inv": A_inv, "G_inv": G_inv}


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite, from the sum: a NaN or an infinity anywhere makes the sum
    NaN or infinite. One pass and no temporary, where isfinite().all() takes three passes and a
    mask as large as the factor (3 ms a step on a 3073x3073 factor). A sum that overflows from
    finite entries (beyond 3e38) also reads as not finite: such a factor is no use either."""
    return bool(torch.isfinite(t.sum()))


def _jittered(M):
    M = M.double()
    scale = float(M.diagonal().abs().mean()) if torch.isfinite(M).all() else 1.0
    return M + max(scale, 1e-12) * 1e-6 * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def assign_owners(modules: dict, world_size: int) -> dict:
    """Each layer's rank for the distributed decompositions, balanced by cost (an
    eigendecomposition of a d x d factor costs ~ d^3): largest first, to the least loaded rank."""
    load = [0.0] * world_size
    owners = {}
    for name, module in sorted(modules.items(), key=lambda kv: -sum(d ** 3 for d in kl.factor_dims(kv[1]))):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[name] = rank
        load[rank] += sum(d ** 3 for d in kl.factor_dims(module))
    return owners
