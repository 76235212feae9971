"""``future``: books a later step will remove -- until then they must stay memorized.

The only "keep" signal a layout without retain books has (the public Gutenberg protocol).
With ``generic.others`` the recipe protects each such book on its calibration side
(ssu/recipes/pool.py); the book is then graded on its audit side only (``ctx.audit``).
"""

from ssu.eval.sets import SetContext, register_eval_set


@register_eval_set("future", goal="keep", label="not yet removed", description="books not removed yet")
def future(ctx: SetContext) -> list[dict]:
    pooled = ctx.audit if getattr(getattr(ctx.config, "generic", None), "others", 0) else {}
    return [w for w in ctx.windows if w["role"] == "forget" and ctx.step_of[w["book"]] > ctx.step
            and (w["book"] not in pooled or w["window"] in pooled[w["book"]])]
