"""The one Definitions object of the code location (workspace.yaml, `dg dev` and `dagster dev` load this module).

Everything is discovered in the defs folder (`cpt_assets/defs`, `[tool.dg.project]` in pyproject.toml): its
modules' assets, checks, jobs, schedules and sensors, and the resources of `defs/resources.py`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
