"""``lightning-nas report``: one self-contained HTML page from a W&B offline run or the tracking sink's files."""

from lightning_nas.report.html import SECTIONS, build_report, render
from lightning_nas.report.load import RunData, load_run, locate

__all__ = ["SECTIONS", "RunData", "build_report", "load_run", "locate", "render"]
