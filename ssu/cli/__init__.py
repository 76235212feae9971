"""The ``ssu`` command line: one command per pipeline stage and per time step.

Every command validates its input up front, prints a one-line ``error:`` message and
exits 1 on bad input, and writes its outputs atomically, so it is safe to re-run after a
crash. The commands live in one module per group (``data``, ``runs``, ``lists``,
``compare``) and register on the group ``main`` (``group``).
"""

from ssu.cli import compare, data, lists, runs  # noqa: F401  (register the commands)
from ssu.cli.group import main

__all__ = ["main"]
