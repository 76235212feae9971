"""``retain``: books memorized by the target and never removed -- they must stay memorized."""

from ssu.eval.sets import SetContext, register_eval_set


@register_eval_set("retain", goal="keep", description="memorized books that are never removed")
def retain(ctx: SetContext) -> list[dict]:
    return [w for w in ctx.windows if w["role"] == "retain"]
