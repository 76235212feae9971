"""Protection that composes with any method: regularizers, one registered file each.

A regularizer is named in the run config (``regularizers: [{name: fisher, args: {lam:
30}}, kl]``) and acts at fixed points of a step, whatever the method (see :mod:`.base`):
before the fine-tune (at θ_{t−1}), as a term of every backward's loss, and on the
step's vector before it is calibrated and stored. Its parameters are its own ``Args``
dataclass, written into the resolved config like every other. ``ssu list
regularizers`` lists them.
"""

from ssu.registry import import_builtins
from ssu.regularizers.base import REGULARIZERS, Regularized, Regularizer

import_builtins(__name__)

__all__ = ["REGULARIZERS", "Regularized", "Regularizer"]
