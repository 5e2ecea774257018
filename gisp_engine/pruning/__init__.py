"""Pruning: a run's validated settings (``config``), objectives (``objectives/``), Σ|W⊙∇W| per structure
(``importance``), the methods and their selections (``methods/``), what a run will need before loading weights
(``plan_estimate``), the loop (``pruner``), the trajectory it writes and its cache (``trajectory``, ``cache``),
data-parallel scoring (``distributed``) and a trajectory's point applied to a model (``subnetwork``).

May import ``data``, ``model`` and ``core``. The loop never names a method: it asks ``methods/`` for scores and a
selection.
"""
