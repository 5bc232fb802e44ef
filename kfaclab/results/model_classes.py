"""The MLP's verdicts beside the ResNet's: where the two model classes disagree, and whether K-FAC's
approximation can be the cause.

The same rules (version 3) judge an MLP (`miniature3`) and a ResNet-8 (`resnet-cpu`). Where their
verdicts differ, two explanations compete: K-FAC approximates the natural gradient less well on
the convolutional, residual, batch-normalised model (measured by `kfaclab.exactness`), or the
model classes train differently whatever the optimizer. The claims tell them apart in part:
some statistics involve K-FAC and some do not (SGD's own efficiency in (b), SGD against Adam in
(i)). A difference on a statistic without K-FAC cannot come from K-FAC's approximation; a
difference only on statistics with K-FAC is consistent with it (not proof of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from kfaclab.results.claims import CLAIM_OPTIMIZERS, NAMES, NOT_RESOLVED, NOT_TESTABLE, Verdict

DECIDED = ("reproduced", "contradicted")


@dataclass
class Comparison:
    claim: str
    mlp: str | None  # the outcome, or None where the set has no verdict (yet)
    resnet: str | None
    uses_kfac: bool

    @property
    def both_decided(self) -> bool:
        return self.mlp in DECIDED and self.resnet in DECIDED

    @property
    def disagree(self) -> bool:
        return self.both_decided and self.mlp != self.resnet


def _parts_without_kfac(v: Verdict) -> list[dict]:
    """The parts of a verdict judged on an optimizer other than K-FAC alone ((b)'s SGD part)."""
    return [p for p in v.parts if p.get("optimizer") not in (None, "kfac") and "outcome" in p]


def compare(mlp: list[Verdict], resnet: list[Verdict]) -> list[Comparison]:
    """Per claim either set judges (f, judged on neither, is left out): both outcomes, and whether
    the claim's statistic involves K-FAC. The SGD parts of (b) and (d) are compared as claims of
    their own ("b:SGD", "d:SGD epochs"), statistics without K-FAC."""
    by_m, by_r = {v.claim: v for v in mlp}, {v.claim: v for v in resnet}
    out = []
    for key in sorted(set(by_m) | set(by_r)):
        if CLAIM_OPTIMIZERS.get(key) is None:
            continue
        m, r = by_m.get(key), by_r.get(key)
        out.append(Comparison(key, m.outcome if m else None, r.outcome if r else None,
                              "kfac" in CLAIM_OPTIMIZERS[key]))
        if key in ("b", "d") and m and r:  # SGD's own parts: statistics without K-FAC
            pm, pr = _part_outcomes(m), _part_outcomes(r)
            for part in sorted(set(pm) & set(pr)):
                out.append(Comparison(f"{key}:{part}", pm[part], pr[part], False))
    return out


def _part_outcomes(v: Verdict) -> dict:
    """{"SGD" or "SGD epochs": outcome} of a verdict's parts on an optimizer other than K-FAC."""
    return {" ".join(x for x in (NAMES.get(p["optimizer"], p["optimizer"]), p.get("budget")) if x): p["outcome"]
            for p in _parts_without_kfac(v)}


def discussion(comparisons: list[Comparison], kfac_cosines: dict | None = None) -> str:
    """A paragraph (Markdown) on what the comparison says about the cause of a difference.
    `kfac_cosines`: {"mlp": (lo, hi), "resnet-bn": (lo, hi)}, K-FAC's whole-model cosine with the
    exact natural-gradient step after training (kfaclab.results.exactness.summary)."""
    def label(c):
        key, _, part = c.claim.partition(":")
        return f"({key}, {part} part)" if part else f"({key})"

    judged = [c for c in comparisons if c.both_decided]
    if not judged:
        waiting = [label(c) for c in comparisons if c.resnet is None or c.mlp is None]
        unresolved = [label(c) for c in comparisons if c.mlp in (NOT_RESOLVED, NOT_TESTABLE)
                      or c.resnet in (NOT_RESOLVED, NOT_TESTABLE)]
        text = "No claim is decided on both model classes yet, so nothing can be said yet about where they differ"
        if waiting:
            text += f" ({', '.join(waiting)} still wait for one set's runs)"
        if unresolved:
            text += f"; {', '.join(unresolved)} are not resolved at this scale on at least one of them"
        return text + "."
    differ = [c for c in judged if c.disagree]
    same = [c for c in judged if not c.disagree]
    text = (f"Decided on both model classes: {', '.join(label(c) for c in judged)}. "
            + (f"They agree on {', '.join(label(c) for c in same)}. " if same else ""))
    # A claim decided on one class and not resolved on the other is a difference of resolution (how
    # tight the intervals are at these sizes), not of direction: said, not explained.
    for name, mine, other in (("ResNet-8", "resnet", "mlp"), ("MLP", "mlp", "resnet")):
        only = [label(c) for c in comparisons if getattr(c, mine) in DECIDED and getattr(c, other) == NOT_RESOLVED]
        if only:
            text += (f"Decided on the {name} only (not resolved at this scale on the other): {', '.join(only)}; a "
                     "difference of resolution, not a contradiction. ")
    h = next((c for c in judged if c.claim == "h"), None)
    if h is not None and h.mlp == h.resnet == "contradicted" and kfac_cosines:
        (m_lo, m_hi), (r_lo, r_hi) = kfac_cosines["mlp"], kfac_cosines["resnet-bn"]
        if r_hi < m_lo:  # K-FAC clearly less exact on the ResNet, yet its lead in iterations holds there
            text += (f"K-FAC needs fewer iterations than SGD at the largest batch on both, although its step after "
                     f"training is much further from the exact natural-gradient step on the ResNet with BatchNorm "
                     f"(cosine {r_lo:.2f}-{r_hi:.2f}) than on the MLP ({m_lo:.2f}-{m_hi:.2f}): closeness to the "
                     "natural gradient is not what decides this verdict. ")
    if not differ:
        return text + "Where both are decided the MLP and the ResNet-8 agree, so no difference needs explaining."
    with_kfac = [c for c in differ if c.uses_kfac]
    without = [c for c in differ if not c.uses_kfac]
    text += f"They disagree on {', '.join(label(c) for c in differ)}. "
    if without:
        text += (f"{', '.join(label(c) for c in without)} involve no K-FAC step, so there the model classes train "
                 "differently whatever K-FAC's approximation; K-FAC's approximation cannot be the whole story. ")
    elif with_kfac:
        text += ("Every disagreement involves K-FAC, and no statistic without K-FAC differs, which is what a worse "
                 "approximation on the ResNet would produce (and is not proof of it). ")
    if with_kfac and kfac_cosines:
        (m_lo, m_hi), (r_lo, r_hi) = kfac_cosines["mlp"], kfac_cosines["resnet-bn"]
        text += (f"On the small networks of the K-FAC chapter, K-FAC's step after training has a cosine of "
                 f"{m_lo:.2f}-{m_hi:.2f} with the exact natural-gradient step on the MLP and {r_lo:.2f}-{r_hi:.2f} "
                 "on the ResNet with BatchNorm.")
    return text.strip()
