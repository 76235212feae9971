"""Unlearning methods, one file each, registered by name in :data:`METHODS`.

A method says how one time step fine-tunes the model (its loss on a batch) and how
the resulting weight change enters the stack; see :mod:`ssu.methods.base`. ``ssu list
methods`` lists them with their parameters.
"""

from ssu.methods.base import METHODS, UnlearningMethod
from ssu.registry import import_builtins

import_builtins(__name__)

__all__ = ["METHODS", "UnlearningMethod"]
