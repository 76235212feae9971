"""data_prep: raw books -> cleaned text -> (prompt, continuation) windows.

The package reads in pipeline order, one module per stage:

* :mod:`data_prep.layout` - find and validate ``time_step_{t}/``, ``retain/``
  and ``heldout/`` in a raw books directory;
* :mod:`data_prep.clean` - strip Gutenberg boilerplate and normalize text;
* :mod:`data_prep.windows` - cut a book into non-overlapping windows;
* :mod:`data_prep.prepare` - validate everything, then write a prepared
  directory (``windows.jsonl``, ``books.jsonl``, ``schedule.json``) atomically;
* :mod:`data_prep.store` - read a prepared directory back as ``datasets``;
* :mod:`data_prep.synth` - a synthetic corpus in the raw layout, for tests;
* :mod:`data_prep.generic` - windows of plain generic text (memorization's mix, retain pools).

Every bad input raises :class:`PrepError` (an ``SSUError``) with a one-line message.
Files are written through :mod:`ssu.io`; nothing else of ``ssu`` is imported.
Importing this package does not import ``datasets`` or ``torch``.
"""

from data_prep.clean import clean_text
from data_prep.errors import PrepError
from data_prep.generic import GenericText, load_generic
from data_prep.prepare import prepare_books
from data_prep.store import book_digests, load_books, load_schedule, load_windows, read_window_rows, windows_for
from data_prep.synth import write_synthetic_corpus
from data_prep.windows import count_words, make_windows

__all__ = [
    "book_digests",
    "GenericText",
    "PrepError",
    "clean_text",
    "count_words",
    "load_books",
    "load_generic",
    "load_schedule",
    "load_windows",
    "make_windows",
    "prepare_books",
    "read_window_rows",
    "windows_for",
    "write_synthetic_corpus",
]
