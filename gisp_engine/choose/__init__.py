"""Choosing a deployment point: every step of a trajectory checked and timed (``sweep``: a llama.cpp cost writes
each step's GGUF), everything remembered as one row per step (``table``), and the sparsest step a user's constraints
allow, or the constraint that binds (``recommend``).

May import ``export``, ``evaluation``, ``pruning``, ``model`` and ``core``.
"""
