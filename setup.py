"""The compiled modules (everything else is in pyproject.toml): a table's lookups,
``proxy/patterns/tables/_finder.c``, and the DNS door's common answers, ``proxy/dns/_lane.c``
(which searches tables through the first's C interface). Optional: without a C compiler and
Python's headers the install still succeeds and the same answers come from Python, slower."""

from setuptools import Extension, setup

TABLES = "proxy/patterns/tables"

setup(ext_modules=[
    Extension("proxy.patterns.tables._finder", [f"{TABLES}/_finder.c"], depends=[f"{TABLES}/_finder.h"],
              optional=True, extra_compile_args=["-O2"]),
    Extension("proxy.dns._lane", ["proxy/dns/_lane.c"], include_dirs=[TABLES],
              depends=[f"{TABLES}/_finder.h"], optional=True, extra_compile_args=["-O2"]),
])
