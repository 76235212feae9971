"""Previously-removed guard: a step must not bring back the books removed before it.

Removing book t moves weights that earlier removals also moved, and a later negated
vector can partly undo an earlier one (measured: a book removed at step 1 back at
ROUGE-L 0.66 after step 3). The guard keeps the earlier books in the step's forget
objective at a small weight: in every backward a few windows of the books removed at
steps 1..t−1 are forwarded and ``−sign · γ · NLL`` of their continuations is added to
the method's loss. For SSU (sign −1: the fine-tune learns, the vector is negated) that
learns the earlier books a little beside book t, so the negated step pushes them
further away instead of back; for a direct method (sign +1: GA, GD, NPO) it ascends
on them. Step 1 has no earlier books and gets no term.

Parameters (``Args``): ``weight`` (γ, default 0.25), ``windows`` (earlier windows per
micro-batch, default: as many as forget windows in it). The step recipe hands it the
earlier books' windows (``fs.earlier``); it reads no schedule itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ssu.engine.losses import LEARN, forward_nll, group_mean_nll, make_batch
from ssu.errors import SSUError
from ssu.regularizers.base import REGULARIZERS, Regularizer, chunk_share, draw_rows


@dataclass
class GuardArgs:
    weight: float = 0.25  # γ: weight of the earlier books' term
    windows: int | None = None  # earlier windows per chunk; None: as many as its forget windows

    def __post_init__(self) -> None:
        if self.weight < 0 or (self.windows is not None and self.windows < 1):
            raise SSUError("guard: weight must be >= 0 and windows >= 1")


@REGULARIZERS.register("guard", description="keep the books removed at earlier steps in the forget objective "
                                            "at weight γ")
class PreviouslyRemovedGuard(Regularizer):
    Args = GuardArgs
    needs_earlier = True
    has_loss = True

    def prepare(self, model, fs) -> None:
        self.books = list(fs.earlier_books)
        self.rows = list(fs.earlier)
        self.pad_id = fs.pad_id
        self.rng = random.Random(self.seed + fs.step)

    def loss(self, model, batch, reference):
        if not self.rows:
            return batch.input_ids.new_zeros((), dtype=next(model.parameters()).dtype), {}
        rows = draw_rows(self.rows, self.rng, self.args.windows, batch)
        earlier = make_batch(rows, self.pad_id).to(batch.input_ids.device)
        nll, mask = forward_nll(model, earlier)
        value = group_mean_nll(nll, mask, earlier, LEARN)
        return -self.sign * self.args.weight * chunk_share(batch) * value, {"earlier_nll": value.item()}

    def record(self) -> dict:
        return {"weight": self.args.weight, "windows": self.args.windows, "books": self.books}
