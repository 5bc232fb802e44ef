"""Studies: specs (`study.yaml`) expanded into runs, executed as papermill notebooks by
`python -m kfaclab sweep` in local worker processes."""

from kfaclab.sweep.spec import Run, Study, load_study, parse_study

__all__ = ["Run", "Study", "load_study", "parse_study"]
