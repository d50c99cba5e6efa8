"""The gateway's native fast path: `SseRewriter` for streamed chat replies and
`rewrite_model` for whole JSON replies.

`proxy.providers.openai.replies` imports both (and `encode_alias`) from here. The compiled twin
(`_sse_c`, Cython) is used when it was built; `PROMETHEUS_NO_EXTENSIONS=1`
or a Python other than CPython selects the pure twin (`_sse_py`), which
behaves identically. `IMPLEMENTATION` says which one is in use.
"""

import importlib
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ("IMPLEMENTATION", "SseRewriter", "encode_alias", "pick_twin", "rewrite_model")

NO_EXTENSIONS = bool(os.environ.get("PROMETHEUS_NO_EXTENSIONS"))
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True


def pick_twin(compiled: str, pure: str) -> tuple[ModuleType, str]:
    """The compiled twin (a module of this package) where it was built and
    extensions are on, else the pure one; and "c" or "py" to say which."""
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"{__name__}.{compiled}"), "c"
        except ImportError:  # not built: fall back to the pure twin
            pass
    return importlib.import_module(f"{__name__}.{pure}"), "py"


IMPLEMENTATION: str
if TYPE_CHECKING:
    from ._sse_py import SseRewriter, rewrite_model

    IMPLEMENTATION = "py"
else:
    _twin, IMPLEMENTATION = pick_twin("_sse_c", "_sse_py")
    SseRewriter, rewrite_model = _twin.SseRewriter, _twin.rewrite_model

from ._sse_py import encode_alias  # noqa: E402 - one implementation, both twins use it
