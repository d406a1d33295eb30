"""The optional compiled encoder (`tlserve.core._encoder`), built from Cython at install.

Like msgpack and PyYAML's libyaml binding: where a C compiler exists the extension is built;
where it does not, or the build fails, tlserve installs as pure Python and runs its Python
encoder (the same numbers, more time per text). ``TLSERVE_PURE_PYTHON=1`` skips the build.
Everything else about the package is in pyproject.toml.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that leaves a pure-Python install behind instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (distutils' CCompilerError and kin)
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"tlserve: the compiled encoder was not built ({exc}); installing the pure-Python encoder",
              file=sys.stderr)


def extensions() -> list[Extension]:
    if os.environ.get("TLSERVE_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError:  # building from a source tree without Cython (or NumPy): pure Python
        return []
    # -ffp-contract=off: no fused multiply-add, so sums round as NumPy's do (bit-identical features).
    flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]
    encoder = Extension("tlserve.core._encoder", ["tlserve/core/_encoder.pyx"], include_dirs=[numpy.get_include()],
                        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], extra_compile_args=flags)
    return cythonize([encoder], compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
