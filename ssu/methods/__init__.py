"""Unlearning methods, one file each, registered by name.

A method says how one time step fine-tunes the model (its loss on a batch) and how
the resulting weight change enters the stack (``sign``: SSU and task-vector
methods *learn* the book and store the negated change; ascent methods already move
away from the book and store the change as it is). Everything else -- batching,
masks, the stack, the manifest, evaluation -- is shared by ``ssu step``.
"""

# Importing the modules registers the built-in methods.
from ssu.methods import ga as _ga  # noqa: F401
from ssu.methods import gd as _gd  # noqa: F401
from ssu.methods import npo as _npo  # noqa: F401
from ssu.methods import ssu as _ssu  # noqa: F401
from ssu.methods import ssu_stable as _ssu_stable  # noqa: F401
from ssu.methods.base import UnlearningMethod, get_method, list_methods, register_method

__all__ = ["UnlearningMethod", "get_method", "list_methods", "register_method"]
