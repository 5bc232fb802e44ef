"""Sphinx extension: every study's tidy tables as CSV files inside the built book.

At the start of a build, `kfaclab.results.export.write_csv` writes each study folder of `runs/`
with a spec (runs, evaluations, steps to target, verdicts) into a static folder of the build;
the results chapters link them as `_static/data/<study>-<table>.csv`. The CSV files and the
chapters are computed from the same records in the same build.
"""

from pathlib import Path

STUDIES = ("cpu", "abs", "sharpness", "noise", "miniature", "gpu", "miniature3", "miniature3-epochs",
           "miniature3-iterations")


def _write_data(app, config):
    from kfaclab.nqm import study_prediction
    from kfaclab.results import load_results
    from kfaclab.results.export import write_csv

    root = Path(app.confdir)
    static = Path(app.outdir).parent / "data-static"
    prediction = study_prediction()  # claim (k)'s NQM prediction, passed to the verdicts
    for name in STUDIES:
        folder = root / "runs" / name
        if (folder / "study.yaml").exists():
            write_csv(load_results(folder), static / "data", prediction)
    config.html_static_path.append(str(static))


def setup(app):
    app.connect("config-inited", _write_data)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
