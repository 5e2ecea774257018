"""A causal LM as the engine sees it: one adapter per model family (``adapters/``), every structure's name and
parameter count (``structures``), physical slicing and masking (``surgery``), loading and the embedded models
(``loading``), next-token and continuation log-likelihoods through the LM head in chunks (``nll``, ``loglik``), and
llama.cpp as a runtime (``llamacpp``, the only module that imports ``llama_cpp``).

May import ``core`` only.
"""
