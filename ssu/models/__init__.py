"""Models: loading any causal LM through the Hugging Face Auto classes and checking a model at
the door (``loading``), and building tiny ones on the spot (``tiny``). Memorizing books into a
model is a recipe (``ssu.recipes.memorize``)."""
