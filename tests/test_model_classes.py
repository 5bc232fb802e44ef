"""The MLP's verdicts beside the ResNet's (kfaclab.results.model_classes): which claims differ,
and what that says about K-FAC's approximation as a cause."""

from kfaclab.results.claims import CONTRADICTED, NOT_RESOLVED, REPRODUCED, Verdict
from kfaclab.results.model_classes import compare, discussion


def v(claim, outcome, parts=()):
    return Verdict(claim, "", "", "study", outcome, "", parts=list(parts))


def b(sgd, kfac):
    return v("b", CONTRADICTED if CONTRADICTED in (sgd, kfac) else REPRODUCED,
             [{"optimizer": "sgd", "outcome": sgd}, {"optimizer": "kfac", "outcome": kfac}])


COSINES = {"mlp": (0.68, 0.81), "resnet-bn": (0.25, 0.58)}


def test_nothing_is_said_before_both_sets_decide():
    text = discussion(compare([v("a", REPRODUCED), v("g", NOT_RESOLVED)], [v("g", REPRODUCED)]), COSINES)
    assert text.startswith("No claim is decided on both model classes yet")
    assert "(a) still wait" in text and "(g) are not resolved" in text


def test_a_difference_only_where_kfac_is_involved_is_consistent_with_its_approximation():
    mlp = [v("a", REPRODUCED), b(REPRODUCED, REPRODUCED), v("i", REPRODUCED)]
    resnet = [v("a", CONTRADICTED), b(REPRODUCED, REPRODUCED), v("i", REPRODUCED)]
    cmp = {c.claim: c for c in compare(mlp, resnet)}
    assert cmp["a"].disagree and cmp["a"].uses_kfac and not cmp["b:SGD"].uses_kfac and not cmp["b:SGD"].disagree
    text = discussion(list(cmp.values()), COSINES)
    assert "They disagree on (a)." in text and "Every disagreement involves K-FAC" in text
    assert "0.68-0.81" in text and "0.25-0.58" in text


def test_a_difference_without_kfac_rules_out_the_approximation_as_the_whole_story():
    mlp = [v("a", REPRODUCED), b(REPRODUCED, REPRODUCED), v("i", CONTRADICTED)]
    resnet = [v("a", CONTRADICTED), b(CONTRADICTED, REPRODUCED), v("i", REPRODUCED)]
    text = discussion(compare(mlp, resnet), COSINES)
    assert "(b, SGD part), (i) involve no K-FAC step" in text and "cannot be the whole story" in text
    assert "Every disagreement involves K-FAC" not in text


def test_agreement_needs_no_explanation_and_claim_f_is_left_out():
    mlp = [v("a", REPRODUCED), v("f", REPRODUCED)]
    resnet = [v("a", REPRODUCED), v("f", CONTRADICTED)]
    assert [c.claim for c in compare(mlp, resnet)] == ["a"]
    assert discussion(compare(mlp, resnet)).endswith("agree, so no difference needs explaining.")


def test_one_sided_decisions_are_named_and_the_exactness_is_read_against_h():
    """Decided on one class, not resolved on the other: named as a difference of resolution. (h)
    contradicted on both while K-FAC's ResNet step is far less exact: the cosines say that
    closeness to the natural gradient does not decide it; with overlapping cosines nothing is said."""
    mlp = [v("a", NOT_RESOLVED), v("g", NOT_RESOLVED), v("h", CONTRADICTED)]
    resnet = [v("a", REPRODUCED), v("g", CONTRADICTED), v("h", CONTRADICTED)]
    text = discussion(compare(mlp, resnet), {"mlp": (0.79, 0.81), "resnet-bn": (0.25, 0.43)})
    assert "Decided on the ResNet-8 only (not resolved at this scale on the other): (a), (g)" in text
    assert "Decided on the MLP only" not in text
    assert "(cosine 0.25-0.43) than on the MLP (0.79-0.81)" in text and "not what decides" in text
    assert text.endswith("no difference needs explaining.")
    close = discussion(compare(mlp, resnet), {"mlp": (0.5, 0.8), "resnet-bn": (0.4, 0.6)})
    assert "not what decides" not in close
    reproduced_h = discussion(compare(mlp[:2] + [v("h", REPRODUCED)], resnet[:2] + [v("h", REPRODUCED)]),
                              {"mlp": (0.79, 0.81), "resnet-bn": (0.25, 0.43)})
    assert "not what decides" not in reproduced_h
