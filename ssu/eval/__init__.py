"""Evaluation after every step: generations, memorization metrics per book and set, utility,
privacy; the report (book × step matrix and plots). The metrics themselves are ``ssu.metrics``."""
