"""The usage report's row printer: `PeriodReader` from the compiled twin
(`_usage_c`, Cython on SQLite's C API) where it was built, else the pure one
(`_usage_py`); `PROMETHEUS_NO_EXTENSIONS=1` or a Python other than CPython
selects the pure one. `proxy.usage.report_out` uses it for `usage`; both
twins raise `ReportError` for a period they cannot print, which is then
printed by the pure one. Kept apart from `_fastpath/__init__` so that the
gateway's workers never load it.
"""

from typing import TYPE_CHECKING

from . import pick_twin
from ._usage_py import PeriodReader as PurePeriodReader
from ._usage_py import row_dicts

__all__ = ("IMPLEMENTATION", "PeriodReader", "PurePeriodReader", "ReportError", "row_dicts")

IMPLEMENTATION: str
if TYPE_CHECKING:
    from ._usage_py import PeriodReader, ReportError

    IMPLEMENTATION = "py"
else:
    _twin, IMPLEMENTATION = pick_twin("_usage_c", "_usage_py")
    PeriodReader, ReportError = _twin.PeriodReader, _twin.ReportError
