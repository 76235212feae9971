"""``future``: books a later step will remove -- until then they must stay memorized.

The only "keep" signal a layout without retain books has (the public Gutenberg protocol).
"""

from ssu.eval.sets import SetContext, register_eval_set


@register_eval_set("future", goal="keep", label="not yet removed", description="books not removed yet")
def future(ctx: SetContext) -> list[dict]:
    return [w for w in ctx.windows if w["role"] == "forget" and ctx.step_of[w["book"]] > ctx.step]
