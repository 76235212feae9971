"""``removed-now``: the book(s) the step removes -- did this step forget them?"""

from ssu.eval.sets import SetContext, register_eval_set


@register_eval_set("removed-now", goal="forget", description="the book(s) removed at this step")
def removed_now(ctx: SetContext) -> list[dict]:
    return [w for w in ctx.windows if w["role"] == "forget" and ctx.step_of[w["book"]] == ctx.step]
