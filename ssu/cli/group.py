"""The ``ssu`` command group and the one place user-facing errors become one line."""

from __future__ import annotations

import sys

import click

from ssu.errors import SSUError


class _Group(click.Group):
    """Turn user-facing errors into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (SSUError, FileExistsError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, FileExistsError):
                msg = f"{e.filename or msg} already exists"
            click.echo(f"error: {msg}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="ssu")
def main() -> None:
    """Stable Sequential Unlearning: remove books from a causal LM one time step at a time."""
