"""kfaclab.exactness: the cosine of K-FAC's step with the exact natural-gradient step, checked
where the answer is known: K-FAC is exact for one linear layer on one example, its Fisher is
float64 dense math's, and a BatchNorm network's Fisher includes the coupling of the batch."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kfaclab import exactness as ex


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def softmax_regression():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).double()


def test_the_fisher_is_the_dense_gauss_newton_matrix():
    """Against the definition computed another way: per example, the Jacobian by autograd row by
    row and the softmax Hessian of the loss in the logits."""
    model = ex.make_model("mlp")
    x, _ = ex.data(4, seed=0)
    fisher, names = ex.exact_fisher(model, x)
    params = [dict(model.named_parameters())[k] for k in names]
    expected = torch.zeros_like(fisher)
    for n in range(len(x)):
        logits = model(x[n:n + 1])[0]
        rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(logits[c], params, retain_graph=True)])
                for c in range(len(logits))]
        J = torch.stack(rows)
        p = torch.softmax(logits, 0).detach()
        expected += J.T @ (torch.diag(p) - torch.outer(p, p)) @ J / len(x)
    torch.testing.assert_close(fisher, expected)


def test_kfac_is_the_exact_natural_gradient_for_one_linear_layer_on_one_example():
    """F = (a a^T) kron (diag p - p p^T) exactly when there is one layer and one example, and the
    eigenbasis damping of K-FAC is then exactly (F + lambda I)^-1: cosine 1."""
    x, y = ex.data(1, seed=3)
    for row in ex.cosines(softmax_regression(), x, y, dampings=(1e-3, 1e-1), fishers=("exact",)):
        assert row["kfac_cosine"] == pytest.approx(1.0, abs=1e-9)


def test_with_more_examples_kfac_is_an_approximation_and_the_plain_gradient_is_further_off():
    x, y = ex.data(16, seed=3)
    rows = ex.cosines(softmax_regression(), x, y, dampings=(1e-3,), fishers=("exact",))
    whole = [r for r in rows if r["layer"] == "all K-FAC layers"][0]
    assert 0.0 < whole["kfac_cosine"] < 1 - 1e-6  # not exact ...
    assert whole["kfac_cosine"] > whole["gradient_cosine"]  # ... but closer than no preconditioning


def test_the_batchnorm_networks_fisher_couples_the_examples():
    """With BatchNorm, example n's logits depend on the other examples through the batch's
    statistics: the Fisher of the batch differs from the sum of the examples' own Fishers."""
    model = ex.make_model("resnet-bn")
    x, _ = ex.data(4, seed=0)
    halves = lambda m: sum(ex.exact_fisher(m, x[i:i + 2])[0] for i in (0, 2)) / 2
    together, _ = ex.exact_fisher(model, x)
    assert together.shape[0] == sum(p.numel() for p in model.parameters())
    assert (together - halves(model)).norm() > 1e-3 * together.norm()  # BatchNorm: the batch is one function
    nobn = ex.make_model("resnet-nobn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nobn.modules())
    torch.testing.assert_close(ex.exact_fisher(nobn, x)[0], halves(nobn))  # without it, examples add up


def test_the_kfac_step_leaves_batchnorm_to_the_plain_gradient():
    model = ex.make_model("resnet-bn")
    x, y = ex.data(8, seed=0)
    step = ex.kfac_step(model, x, y, damping=1e-2, fisher="exact")
    twin = ex.make_model("resnet-bn")
    loss = F.cross_entropy(twin(x), y)
    grads = dict(zip([k for k, _ in twin.named_parameters()], torch.autograd.grad(loss, list(twin.parameters()))))
    for name in step:
        if ".bn" in name or name.startswith("bn1"):
            torch.testing.assert_close(step[name], grads[name])
    assert set(ex.preconditioned_names(model)) == {n for n, m in model.named_modules()
                                                    if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_a_bad_exactness_file_is_an_error_that_names_it(tmp_path):
    from kfaclab.errors import UsageError
    from kfaclab.results.exactness import load_exactness

    for text, says in (("{", "cannot read"), ('{"kind": "other", "version": 1, "rows": []}', "is not a version-1"),
                       ('{"kind": "kfaclab.exactness", "version": 1, "rows": [{"model": "mlp"}]}', "lacks columns")):
        path = tmp_path / "e.json"
        path.write_text(text)
        with pytest.raises(UsageError, match=says):
            load_exactness(path)


def test_the_committed_measurements_are_what_the_code_computes():
    """runs/exactness/exactness.json against a recomputation of one of its cases."""
    from pathlib import Path

    from kfaclab.results.exactness import load_exactness, whole_model_table

    path = Path(__file__).resolve().parents[1] / "runs" / "exactness" / "exactness.json"
    rows, info = load_exactness(path)
    assert set(info["models"]) == set(ex.MODELS) and len(rows) == len(rows.drop_duplicates(
        ["model", "state", "batch_size", "damping", "fisher", "layer"]))
    assert whole_model_table(rows).notna().all().all()
    again = pd.DataFrame(ex.measure("mlp", "init", 8, dampings=(1e-2,), fishers=("exact",)))
    stored = rows[(rows["model"] == "mlp") & (rows["state"] == "init") & (rows["batch_size"] == 8)
                  & (rows["damping"] == 1e-2) & (rows["fisher"] == "exact")]
    merged = stored.merge(again, on="layer", suffixes=("", "_again"))
    assert len(merged) == len(again) > 1
    assert merged["kfac_cosine"].to_numpy() == pytest.approx(merged["kfac_cosine_again"].to_numpy(), abs=1e-9)
    assert merged["gradient_cosine"].to_numpy() == pytest.approx(merged["gradient_cosine_again"].to_numpy(), abs=1e-9)


def test_the_chart_shows_each_model_class_with_its_damping_and_fisher_to_choose():
    import itertools

    from kfaclab import plots

    rows = pd.DataFrame([{"model": m, "state": s, "batch_size": b, "damping": d, "fisher": f, "parameters": 10,
                          "layer": "all K-FAC layers", "kfac_cosine": 0.5, "gradient_cosine": 0.4}
                         for m, s, b, d, f in itertools.product(ex.MODELS, ("init", "trained"), (8, 32),
                                                                (1e-3, 1e-2), ("exact", "mc"))])
    spec = plots.exactness_chart(rows, ex.MODELS).to_dict()
    assert {p["name"] for p in spec["params"]} == {"damping", "fisher"}
    assert spec["facet"]["column"]["sort"] == [plots.exactness.SHORT[m] for m in ex.MODELS]
    assert spec["spec"]["encoding"]["strokeDash"]["field"] == "series"
    data = next(iter(spec["datasets"].values()))
    assert {d["series"] for d in data} == {"K-FAC", "plain gradient"} and len(data) == 2 * len(rows)
    assert "runs/exactness" in spec["title"]["subtitle"][0]
