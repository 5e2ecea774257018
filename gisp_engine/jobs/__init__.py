"""Work that outlives a page: prunes and sweeps in detached processes, one per request key (``background``), and
the cache's upkeep (``housekeeping``: ``gisp cache rm|prune``; never a running job). ``python -m gisp_engine.jobs run
DIR`` is the worker's entry point; a job's liveness check knows its process by that module name.

May import every layer below it; only the CLI and the app import it.
"""
