"""What a report section of a variant or a task is given: the experiment as the report skeleton read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ferbench.harness.spec import StudySpec


@dataclass(frozen=True)
class ReportContext:
    experiment_dir: Path
    report_dir: Path  # tables/ and figures/ go under it
    spec: StudySpec  # the stored spec, read back into the spec model
    epochs: pd.DataFrame  # every row of every trial (``ferbench.reports.collect``)
    trials: pd.DataFrame  # one row per arm, with the comparison's derived columns
