"""Protection that composes with any method: regularizers, one registered file each.

A regularizer is named in the run config (``regularizers: [fisher, kl]``) and acts at
fixed points of a step, whatever the method (see :mod:`.base`): before the fine-tune
(at θ_{t−1}), as a term of every backward's loss, and on the step's vector before it
is calibrated and stored. Its hyperparameters are config keys of its own, written into
the resolved config like every other. ``ssu regularizers`` lists them.
"""

from ssu.engine.regularizers import fisher, guard, kl, retain_mask  # noqa: F401  (register)
from ssu.engine.regularizers.base import (
                                          Regularized,
                                          Regularizer,
                                          get_regularizer,
                                          list_regularizers,
                                          register_regularizer,
)

__all__ = ["Regularized", "Regularizer", "get_regularizer", "list_regularizers", "register_regularizer"]
