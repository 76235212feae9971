"""Side-by-side comparison of methods on the same data, model and seed (``runner``, ``plots``),
with a model retrained without the removed books as the reference (``ssu.recipes.retrain``).
Above the recipes: a comparison is nothing but ordinary runs plus a summary."""
