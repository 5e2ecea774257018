"""Plumbing every layer shares: ``GispError`` (``errors``), the cache and data folders and the serving limits
(``settings``), atomic writes and file locks (``fsutil``), progress events (``progress``), how extensions are found
(``registry``) and who may change things (``serving``).

Imports nothing else of the engine: this is the bottom layer.
"""
