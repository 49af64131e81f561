"""``lightning-landscape scan``: sweep weight decay up and down, locate the L2 collapse and its order."""

from lightning_landscape.scan.analysis import ScanAnalysis, analyse
from lightning_landscape.scan.engine import ScanConfig, ScanPoint, run_scan
from lightning_landscape.scan.problem import BUILTIN_TASKS, ScanProblem, builtin_problem

__all__ = ["BUILTIN_TASKS", "ScanAnalysis", "ScanConfig", "ScanPoint", "ScanProblem", "analyse", "builtin_problem", "run_scan"]
