"""``heldout``: text never trained on -- utility (perplexity) and MIA's non-members."""

from ssu.eval.sets import SetContext, register_eval_set


@register_eval_set("heldout", goal="unseen", description="text never trained on")
def heldout(ctx: SetContext) -> list[dict]:
    return [w for w in ctx.windows if w["role"] == "heldout"]
