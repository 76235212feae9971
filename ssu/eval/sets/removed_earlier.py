"""``removed-earlier``: books removed at an earlier step -- they must stay forgotten."""

from ssu.eval.sets import SetContext, register_eval_set


@register_eval_set("removed-earlier", goal="forget", description="books removed at steps before this one")
def removed_earlier(ctx: SetContext) -> list[dict]:
    return [w for w in ctx.windows if w["role"] == "forget" and ctx.step_of[w["book"]] < ctx.step]
