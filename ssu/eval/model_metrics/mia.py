"""``mia``: membership-inference AUCs (loss, zlib, min-k 40 %) of forget-goal vs unseen-goal windows.

Members are the windows of every set whose goal is ``forget`` (removed now and
earlier), non-members those of sets whose goal is ``unseen`` (held-out text).
AUC 0.5 = the attack cannot tell them apart; near 1 = still memorized (lower score =
member, ssu.metrics.privacy). One row per score, book ``*``.
"""

from __future__ import annotations

from ssu.eval.model_metrics import MODEL_METRICS, ModelContext, ModelMetric
from ssu.metrics import loss_score, mia_auc, min_k_score, zlib_score

SET = "removed-vs-heldout"
SCORES = ("mia_auc_loss", "mia_auc_zlib", "mia_auc_mink")


def _groups(ctx: ModelContext) -> tuple[list[int], list[int]]:
    members = [i for i, w in enumerate(ctx.windows) if ctx.goals.get(w["set"]) == "forget"]
    nonmembers = [i for i, w in enumerate(ctx.windows) if ctx.goals.get(w["set"]) == "unseen"]
    return members, nonmembers


# An AUC is not an "accuracy": higher = the attack separates better = more leakage.
@MODEL_METRICS.register("mia", outputs=dict.fromkeys(SCORES, False),
                        description="membership-inference AUC, forget vs held-out (loss, zlib, min-k)")
class MembershipInference(ModelMetric):
    def missing(self, ctx: ModelContext) -> bool:
        members, nonmembers = _groups(ctx)
        return bool(members and nonmembers) and any(not ctx.has("*", SET, s) for s in SCORES)

    def compute(self, ctx: ModelContext) -> list[dict]:
        if not self.missing(ctx):
            return []
        members, nonmembers = _groups(ctx)
        lp, w = ctx.logprobs, ctx.windows
        score = {
            "mia_auc_loss": lambda i: loss_score(lp[i]),
            "mia_auc_zlib": lambda i: zlib_score(lp[i], w[i]["prompt"] + " " + w[i]["continuation"]),
            "mia_auc_mink": lambda i: min_k_score(lp[i], 0.4),
        }
        return [{"step": ctx.step, "book": "*", "set": SET, "metric": name,
                 "value": float(mia_auc([score[name](i) for i in members], [score[name](i) for i in nonmembers])),
                 "ci_low": None, "ci_high": None, "n": len(members) + len(nonmembers)}
                for name in SCORES if not ctx.has("*", SET, name)]
