"""Evaluation components: which windows are scored after a step (``sets``), greedy generation
(``generation``), log-probabilities (``logprobs``), ROUGE-L for quick checks (``memorization``)
and model-level metrics (``model_metrics``: perplexity, MIA, lm-eval). The text metrics are
``ssu.metrics``; running an evaluation on a run directory and the report are recipes
(``ssu.recipes.evaluate``, ``ssu.recipes.report``)."""
