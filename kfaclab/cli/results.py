"""`kfaclab results`: a study's runs by status, steps to each target, B_crit, CSV tables and verdicts."""

from __future__ import annotations


def add_parsers(sub) -> dict:
    """The parsers of this family's commands, under `sub`; returns each command's body by name."""
    r = sub.add_parser("results", help="summarize a study's results: runs by status, steps to each target, B_crit")
    r.add_argument("study", help="the study folder or its spec, e.g. runs/cpu")
    r.add_argument("--unit", choices=("iterations", "epochs", "examples", "seconds", "propagations"),
                   default="iterations", help="unit of steps to target")
    r.add_argument("--csv", metavar="DIR", help="also write the study's tidy tables as CSV files into DIR (runs, "
                                                "evaluations, steps to target, verdicts)")
    r.add_argument("--verdicts", action="store_true", help="also judge the papers' claims (book/verdicts.md)")
    return {"results": cmd_results}



def cmd_results(args) -> int:
    import numpy as np
    import pandas as pd

    from kfaclab.results import (
        critical_batch_size,
        load_results,
        status_counts,
        steps_to_target,
        with_ideal_scaling,
    )
    from kfaclab.results.study import complete_cells

    res = load_results(args.study)
    if args.csv or args.verdicts:
        from kfaclab.nqm import (
            study_prediction,  # claim (k) compares the runs with the NQM
        )
    if args.csv:
        from kfaclab.results.export import write_csv

        for path in write_csv(res, args.csv, study_prediction()):
            print(f"wrote {path}")
    if args.verdicts:
        from kfaclab.results import judged_v3
        from kfaclab.results.verdict_display import verdict_display
        from kfaclab.results.verdicts import verdicts

        if judged_v3.is_v3(res):  # rules version 3 judge the study with its siblings
            # as the book does: a verdict only once every run it compares has finished, the
            # others named with the runs they wait for
            j = judged_v3.judged_for(res)
            print(f"rules version 3, on {', '.join(s.name for s in j.studies())}")
            vs, waiting = judged_v3.ready_verdicts(j, study_prediction())
            if waiting:
                print(judged_v3.waiting_line(waiting, j.names) + ".")
        else:
            left = int(res.runs["status"].isin(["pending", "interrupted"]).sum())
            if left:
                print(f"verdicts: {left} runs of {len(res.runs)} have not finished; a verdict is drawn only from a "
                      "finished study (these are provisional)")
            vs = verdicts(res, prediction=study_prediction())
        if vs:
            with pd.option_context("display.width", 200, "display.max_colwidth", 70):
                print(verdict_display(vs).to_string(index=False))
        print()
    print(f"study {res.name} ({res.directory}): {len(res.runs)} runs")
    for name, problem in res.malformed:
        print(f"  malformed: {name} {problem} (counted as not run; a sweep moves it aside and runs it again)")
    print(status_counts(res).to_string())
    if res.bracket_cells:
        from kfaclab.results.study import bracket_table

        print("\nbracketing: does each (optimizer, batch size) grid hold its optimum inside?")
        print(bracket_table(res).to_string(index=False))
    partial = bool(res.runs["status"].isin(["pending", "interrupted"]).any())

    def steps(kind):
        # A grid with runs still to come gives its minimum so far, marked '*' ('-*': none
        # reached it yet); '-': no run of a finished grid reached the target.
        t = with_ideal_scaling(steps_to_target(res, kind=kind), args.unit)
        t["cell"] = [("-" if v != v else f"{v:,.4g}") + ("*" if p else "") for v, p in zip(t[args.unit], t["pending"])]
        return t.pivot(index="batch_size", columns=["target", "optimizer"],
                       values="cell").sort_index(axis=1).to_string()

    note = "; *: best so far, the grid has runs still to come" if partial else ""
    print(f"\n{args.unit} to each target (minimum over the grid; -: no run reached it{note})")
    print(steps("accuracy"))
    if res.loss_targets:
        print(f"\n{args.unit} to each training-loss target (running training loss at or below it{note})")
        print(steps("loss"))
    if (res.runs["batch_schedule"] != "fixed").any():
        from kfaclab.results.adaptive import comparison

        cols = ["method", "target", "iterations_to_target", "fewer_iterations", "total_iterations", "final_accuracy",
                "accuracy_change"]
        print("\nadaptive batch schedules against the same optimizer at a fixed batch (best learning rate each):")
        with pd.option_context("display.float_format", "{:,.4g}".format, "display.width", 160):
            print(comparison(res).reindex(columns=cols).to_string(index=False))
    if len(res.batch_sizes()) < 3:
        return 0  # a fit of S(B) needs batch sizes to fit
    done = complete_cells(res)
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts_v3 import b_crit_intervals

    v3 = {t: b_crit_intervals(done, t) for t in res.targets} if judged_v3.is_v3(res) else None
    print("\nfit S(B) = S_min (1 + B_crit / B), "
          + ("90% interval of rules version 3 (pooled seed bootstrap, hull)" if v3 is not None else
             "68% bootstrap interval over grid points")
          + (" (batch sizes whose grid has finished)" if partial else "") + ":")
    for opt in res.optimizers():
        for t in res.targets:
            try:
                f = critical_batch_size(done, opt, t, args.unit, n_boot=200)
            except ValueError as e:
                print(f"  {opt} {t:g}: {e}")
                continue
            lo, hi = v3[t].get(opt, (float("nan"),) * 3)[1:] if v3 is not None else f["b_crit_interval"]
            iv = f"[{lo:,.0f}, {hi:,.0f}]" if np.isfinite([lo, hi]).all() else "[no interval: not identified]"
            print(f"  {opt} {t:g}: B_crit {f['b_crit']:,.0f} {iv}, S_min {f['s_min']:,.4g}"
                  f"{' (at the edge of the search: not identified)' if f['at_edge'] else ''}")
    return 0
