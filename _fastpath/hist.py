"""The usage histograms' byte codec (`encode`, `add`, `add_into`,
`add_to_list`; the format is in `_hist_py`'s docstring) from the compiled
twin (`_hist_c`) where it was built, else the pure one; chosen as
`_fastpath` chooses. `proxy.usage.hist` re-exports it: the usage writer's
upserts (on its SQLite thread, holding the GIL) and the dashboard's readers
call it for every rollup row they touch.
"""

from typing import TYPE_CHECKING

from . import pick_twin

__all__ = ("IMPLEMENTATION", "add", "add_into", "add_to_list", "encode")

IMPLEMENTATION: str
if TYPE_CHECKING:
    from ._hist_py import add, add_into, add_to_list, encode

    IMPLEMENTATION = "py"
else:
    _twin, IMPLEMENTATION = pick_twin("_hist_c", "_hist_py")
    add, add_into, add_to_list, encode = _twin.add, _twin.add_into, _twin.add_to_list, _twin.encode
