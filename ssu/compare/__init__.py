"""Side-by-side comparison of methods on the same data, model and seed (``runner``, ``plots``),
with a model retrained without the removed books as the reference (``retrain``)."""
