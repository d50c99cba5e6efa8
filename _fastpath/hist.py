"""The usage histograms' byte codec (`encode`, `add`, `add_into`,
`add_to_list`; the format is in `_hist_py`'s docstring) from the compiled
twin (`_hist_c`) where it was built, else the pure one; chosen as
`_fastpath` chooses. `proxy.usage.hist` re-exports it: the usage writer's
upserts (on its SQLite thread, holding the GIL) and the dashboard's readers
call it for every rollup row they touch.
"""

from typing import TYPE_CHECKING

from . import NO_EXTENSIONS

__all__ = ("IMPLEMENTATION", "add", "add_into", "add_to_list", "encode")

IMPLEMENTATION: str
if TYPE_CHECKING or NO_EXTENSIONS:
    from ._hist_py import add, add_into, add_to_list, encode

    IMPLEMENTATION = "py"
else:
    try:
        from ._hist_c import add, add_into, add_to_list, encode

        IMPLEMENTATION = "c"
    except ImportError:  # not built: the pure twin
        from ._hist_py import add, add_into, add_to_list, encode

        IMPLEMENTATION = "py"
