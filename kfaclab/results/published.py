"""What the papers themselves report for each claim the verdicts judge (kfaclab.results.verdicts).

Each entry is the published statement or number with the text it comes from, so the book can
put it beside what the runs here measured. Only what could be read in a published text is
given; where the text available to us states the claim without a number, `number` is None and
the book says that no number was found rather than guessing one from a figure. The quotes are
short phrases from abstracts (the full texts' figures give curves, not tabulated values); the
authors' summary of their talk is our paraphrase and is marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass

MA_AAAI = "Ma et al., AAAI 2020, abstract"
MA_ARXIV = "Ma et al., arXiv 1903.06237v3, abstract"
ZHANG = "Zhang et al., NeurIPS 2019, abstract"
YAO_ICLR = "Yao et al., ICLR 2019 submission (OpenReview), abstract"
YAO_ARXIV = "Yao et al., arXiv 1810.01021, abstract"
SLIDES = "the authors' talk on the study, in our paraphrase"


@dataclass(frozen=True)
class Published:
    claim: str          # the verdict key, "a" to "k"
    says: str           # the paper's statement, a short quote
    number: str | None  # the number the text gives, or None where it gives none
    source: str
    quoted: bool = True  # False: our paraphrase of a talk, not the published words

    def display(self) -> str:
        figure = self.number if self.number else "no number in the published text we could read"
        says = f"“{self.says}”" if self.quoted else f"{self.says} (paraphrase)"
        return f"{says} ({figure}; {self.source})"


PUBLISHED = {
    "a": Published("a", "K-FAC does not exhibit improved large-batch scalability behavior, as compared to SGD",
                   None, MA_ARXIV),
    "b": Published("b", "beyond a critical batch size both K-FAC and SGD significantly deviate from ideal strong "
                        "scaling behaviour", None, MA_AAAI),
    "c": Published("c", "optimization algorithms that employ preconditioning, specifically Adam and K-FAC, result "
                        "in much larger critical batch sizes than stochastic gradient descent with momentum",
                   None, ZHANG),
    "d": Published("d", "with a fixed number of epochs, larger batches make hyperparameters less robust; with a "
                        "fixed number of iterations, more robust", None, SLIDES, quoted=False),
    "e": Published("e", "K-FAC, in addition to requiring more hyperparameters to tune, suffers from similar "
                        "hyperparameter sensitivity behavior as does SGD", None, MA_ARXIV),
    # The two versions of Yao et al.'s abstract disagree on the iteration saving: both are given.
    "f": Published("f", "exceeds the performance of the existing solutions in terms of both accuracy and the "
                        "number of SGD iterations", "up to 1% accuracy and 3x fewer iterations (ICLR 2019 "
                        "submission); up to 1% and 5x (arXiv version)", f"{YAO_ICLR}; {YAO_ARXIV}"),
    "g": Published("g", "at small batch sizes K-FAC, even extensively tuned, matches SGD but does not beat it",
                   None, SLIDES, quoted=False),
    "h": Published("h", "as the batch size grows K-FAC needs more iterations than SGD", None, SLIDES,
                   quoted=False),
    "i": Published("i", "optimization algorithms that employ preconditioning, specifically Adam and K-FAC, result "
                        "in much larger critical batch sizes than stochastic gradient descent with momentum",
                   None, ZHANG),
    "j": Published("j", "the NQM predicts our results with preconditioned optimizers", None, ZHANG),
    "k": Published("k", "the NQM captures many of the essential features of real neural network training, despite "
                        "being drastically simpler to work with", None, ZHANG),
}

# The scale of the published study, for the book's comparisons of budgets and grids.
PAPER_EXPERIMENTS_PER_BATCH_SIZE = "more than 512 experiments per batch size for each of these methods"
PAPER_EXPERIMENTS_SOURCE = MA_AAAI


def published(claim: str) -> Published:
    """The published statement behind a verdict key; a KeyError names the keys there are."""
    try:
        return PUBLISHED[claim]
    except KeyError:
        raise KeyError(f"no published statement for claim {claim!r}; claims: {', '.join(PUBLISHED)}") from None
