"""``fedmoe report DIR``: a sweep directory's tables and plots as markdown + PNG.

:mod:`fedmoe.report.markdown` writes the report, :mod:`fedmoe.report.paired` its paired
differences, :mod:`fedmoe.report.figures` chooses and :mod:`fedmoe.report.plots` draws
its figures; :mod:`fedmoe.sweep.reader` reads the sweep directory.
"""

from fedmoe.report.markdown import write_report
from fedmoe.sweep.reader import ReportError, read_sweep

__all__ = ["ReportError", "read_sweep", "write_report"]
