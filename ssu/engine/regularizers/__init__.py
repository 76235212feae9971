"""Protection that composes with any method: regularizers, one registered file each.

A regularizer is named in the run config (``regularizers: [fisher]``) and acts at
fixed points of a step, whatever the method: :meth:`Regularizer.prepare` before the
fine-tune (at θ_{t−1}) and :meth:`Regularizer.vector` on the step's vector before it
is calibrated and stored. Its hyperparameters are config keys of its own, written into
the resolved config like every other. ``ssu regularizers`` lists them.
"""

from ssu.engine.regularizers import fisher  # noqa: F401  (registers)
from ssu.engine.regularizers.base import Regularizer, get_regularizer, list_regularizers, register_regularizer

__all__ = ["Regularizer", "get_regularizer", "list_regularizers", "register_regularizer"]
