"""The one exception type of data preparation.

Every problem with the user's books or options is raised as :class:`PrepError`
with a single-line message that names the offending file, directory or option,
so the CLI can print it verbatim and exit non-zero. Anything else escaping from
``data_prep`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

from ssu.errors import SSUError


class PrepError(SSUError, ValueError):
    """Bad input to data preparation; the message is one line and names the culprit.

    An :class:`~ssu.errors.SSUError` like every user-facing error of the toolkit, so the
    CLI prints it the same way; a ``ValueError`` for callers that catch bad values."""

    def __init__(self, message: str) -> None:
        # Guarantee the one-line contract even if a path or decoded snippet
        # smuggles in a newline: the CLI prints this message as a single line.
        super().__init__(re.sub(r"[\r\n]+", " ", str(message)))


def out_dir_exists(path: str | Path) -> PrepError:
    """Return the error for an output directory that exists without ``overwrite``."""
    return PrepError(f"output directory {path} already exists; pass overwrite to replace it")
