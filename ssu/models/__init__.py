"""Models: loading any causal LM through the Hugging Face Auto classes (``loading``), building
tiny ones on the spot (``tiny``) and memorizing books into them (``memorize``)."""
