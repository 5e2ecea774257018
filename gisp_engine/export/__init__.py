"""Writing a point of a trajectory so that it loads elsewhere: Hugging Face folders, per-layer or uniform
(``hf``), every step in one folder (``elastic``), GGUF for llama.cpp and Ollama (``gguf``, ``gguf_vocab``), what an
export folder is and what every writer shares (``folder``), which widths an export keeps (``widths``), loading any
kind back (``load``), and the modeling code a per-layer folder carries (``remote_code/``, standalone templates).

May import ``evaluation`` (a GGUF's model card quotes the remembered checks), ``pruning``, ``data``, ``model`` and
``core``.
"""
