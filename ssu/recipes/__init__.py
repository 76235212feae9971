"""Recipes: the code that knows the run directory, one file per command that works on it.

The components below (``ssu.engine``, ``ssu.methods``, ``ssu.regularizers``,
``ssu.eval``, ...) take windows, models and settings; a recipe reads the prepared
data, the schedule and the run directory, puts the components together for one
command, and writes what it made atomically (torchtune's split of ``torchtune/`` and
``recipes/``):

- ``init``: ``ssu init`` -- the resolved config (``components`` checks the names);
- ``step``: ``ssu step`` -- set up, train, extract, calibrate (``calibrate``), save;
- ``evaluate``, ``report``: ``ssu eval``, ``ssu report``;
- ``compose``: θ_t from the run's stack, in memory or as a model directory;
- ``memorize``, ``retrain``: the memorized target, and the reference that never saw the books;
- ``run_dir``, ``migrate``: the directory's layout, and runs made by an earlier release.
"""
