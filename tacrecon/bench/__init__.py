"""The benchmark: grid configs, a resumable runner (local or Ray) and the report."""

from tacrecon.bench.cells import Cell, expand, select
from tacrecon.bench.config import BenchConfig, Grid, load_config
from tacrecon.bench.report import report_text, write_report
from tacrecon.bench.runner import parse_only, plan, run_grid

__all__ = ["BenchConfig", "Cell", "Grid", "expand", "load_config", "parse_only", "plan", "run_grid", "report_text",
           "select", "write_report"]
