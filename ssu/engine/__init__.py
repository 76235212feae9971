"""The training engine: one time step's fine-tune and everything it needs -- given windows,
a model and settings; it reads no run directory and no schedule (``ssu.recipes`` do).

- ``forget_set``, ``encoding``: the step's prompt/continuation windows as token ids (learning,
  random-label, retain and earlier-removed rows).
- ``losses``, ``prefix``: one forward for every row of a micro-batch (prompts shared where possible),
  with losses over continuation tokens only.
- ``saliency``: the gradient-saliency mask (exact threshold, applied in place, chunk by chunk).
- ``finetune``: the loop -- accumulation, finite checks, mask, clipping, AdamW.
- ``precision``: where θ's weights live and in which dtype the forward runs.
- ``distributed``: this process's share under ``accelerate launch`` / ``torchrun`` (DDP, FSDP2).
- ``alpha``: the trained model at θ_{t−1} + α·v and back, exactly (calibration, early stop).
- ``seeding``: seeds and deterministic kernels.
"""
