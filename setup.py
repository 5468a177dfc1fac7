"""The one compiled module (everything else is in pyproject.toml): a table's lookups in C,
``proxy/patterns/tables/_finder.c``. Optional: without a C compiler and Python's headers the
install still succeeds and the tables look up in Python (the same answers, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("proxy.patterns.tables._finder", ["proxy/patterns/tables/_finder.c"],
                             optional=True, extra_compile_args=["-O2"])])
