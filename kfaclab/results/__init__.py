"""runs/<study>/ -> tidy frames and the study's derived quantities (the book reads these)."""

from kfaclab.results.noise import noise_scale_by_run, noise_scale_series
from kfaclab.results.robustness import (
                                     BUDGET_TYPES,
                                     accuracy_at_budget,
                                     default_budget,
                                     high_accuracy_region,
)
from kfaclab.results.scaling import (
                                     UNITS,
                                     critical_batch_size,
                                     fit_steps_curve,
                                     steps_curve,
                                     steps_to_target,
                                     with_ideal_scaling,
)
from kfaclab.results.study import (
                                     STATUSES,
                                     StudyResults,
                                     evidence,
                                     finished,
                                     load_results,
                                     status_counts,
)

__all__ = ["BUDGET_TYPES", "STATUSES", "UNITS", "StudyResults", "accuracy_at_budget", "critical_batch_size",
           "default_budget", "evidence", "finished", "fit_steps_curve", "high_accuracy_region", "load_results",
           "noise_scale_by_run", "noise_scale_series", "status_counts", "steps_curve", "steps_to_target",
           "with_ideal_scaling"]
