"""The compiled hot path (src/pybeam/_speedups.c); everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler), pybeam
installs and runs on its pure-Python code, which behaves the same, slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pybeam._speedups", ["src/pybeam/_speedups.c"], optional=True)])
