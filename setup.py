"""Build script: compiles the `_fastpath` Cython extensions (the SSE rewriter,
the usage histograms' codec and the usage report's reader).

`pyproject.toml` holds the metadata; this file exists only to declare the
extension. `PROMETHEUS_NO_EXTENSIONS=1` at build time skips compiling it (the
pure-Python twin is then used at run time).
"""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("PROMETHEUS_NO_EXTENSIONS"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension("_fastpath._sse_c", ["_fastpath/_sse_c.pyx"], extra_compile_args=["-O3"]),
            Extension("_fastpath._hist_c", ["_fastpath/_hist_c.pyx"], extra_compile_args=["-O3"]),
            # the usage report's reader links SQLite; without its headers the
            # build goes on and `_fastpath.usage` uses the pure twin
            Extension(
                "_fastpath._usage_c",
                ["_fastpath/_usage_c.pyx"],
                libraries=["sqlite3"],
                extra_compile_args=["-O3"],
            ),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
    for ext in ext_modules:  # cythonize's copies drop `optional`
        ext.optional = ext.name == "_fastpath._usage_c"

setup(ext_modules=ext_modules)
