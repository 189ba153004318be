"""The optional compiled translator (server/zstack_gateway/_wire.pyx).

Everything else is declared in pyproject.toml. Where there is no C compiler (or no Cython), the
extension is skipped with a warning and the gateway runs its pure-Python path; `zstack_gateway.wire`
says which path is active, and so does the gateway's start log line.
"""

from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that lets the package install when the extension cannot be compiled: the failed
    extension is left out of what is copied and installed."""

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # any compiler failure: no compiler, missing headers, ...
            print(f"warning: {ext.name} not built ({exc}); the gateway will run its pure-Python path")
            self.extensions = [other for other in self.extensions if other is not ext]


try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: the pure-Python path only
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("zstack_gateway._wire", ["server/zstack_gateway/_wire.pyx"], optional=True)],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
