"""What the explorer shows: a trajectory arranged for scrubbing and the shipped examples (``view``), why a
structure was removed, from the stored scores, and attention patterns (``explain``), and the plotly figures of both
(``figures``).

May import ``pruning``, ``model`` and ``core``; never ``evaluation`` or ``export``.
"""
