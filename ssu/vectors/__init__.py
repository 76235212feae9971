"""Task vectors and the stack: what each step stores and how θ_t is composed from them.

- ``task_vector``: dense float32 deltas (sparse on disk), arithmetic, the file format.
- ``lora_vector``: the exact delta of a LoRA fine-tune, kept as factors.
- ``io``: ``load_vector`` for either kind.
- ``stack``: the ordered vectors of a run, composition and re-weighting.

Composing θ_t from a run directory is a recipe (``ssu.recipes.compose``); nothing here reads one.
"""

from ssu.vectors.io import load_vector
from ssu.vectors.lora_vector import LoraFactors, LoraTaskVector
from ssu.vectors.stack import StackEntry, VectorStack
from ssu.vectors.task_vector import RoundingReport, TaskVector

__all__ = ["LoraFactors", "LoraTaskVector", "RoundingReport", "StackEntry", "TaskVector", "VectorStack",
           "load_vector"]
