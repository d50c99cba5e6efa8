"""The gateway's native fast path: `SseRewriter` for streamed chat replies and
`rewrite_model` for whole JSON replies.

`proxy.providers.openai.replies` imports both (and `encode_alias`) from here. The compiled twin
(`_sse_c`, Cython) is used when it was built; `PROMETHEUS_NO_EXTENSIONS=1`
or a Python other than CPython selects the pure twin (`_sse_py`), which
behaves identically. `IMPLEMENTATION` says which one is in use.
"""

import os
import sys
from typing import TYPE_CHECKING

__all__ = ("IMPLEMENTATION", "SseRewriter", "encode_alias", "rewrite_model")

NO_EXTENSIONS = bool(os.environ.get("PROMETHEUS_NO_EXTENSIONS"))
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True

IMPLEMENTATION: str
if TYPE_CHECKING or NO_EXTENSIONS:
    from ._sse_py import SseRewriter, rewrite_model

    IMPLEMENTATION = "py"
else:
    try:
        from ._sse_c import SseRewriter, rewrite_model

        IMPLEMENTATION = "c"
    except ImportError:  # not built: fall back to the pure twin
        from ._sse_py import SseRewriter, rewrite_model

        IMPLEMENTATION = "py"

from ._sse_py import encode_alias  # noqa: E402 - one implementation, both twins use it
