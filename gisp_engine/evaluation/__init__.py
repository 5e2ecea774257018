"""Numbers at a point of a trajectory, as other tools compute them: lm-eval's multiple-choice accuracies
(``zeroshot``), GSM8K exact match (``gsm8k``), WikiText-2 perplexity and every metric by task name (``evaluate``),
the checks a user runs and their memory (``checks``), and cost: speed and memory in PyTorch (``cost``) and in
llama.cpp (``cost_llamacpp``).

May import ``pruning``, ``data``, ``model`` and ``core``; never ``export`` or ``explore``.
"""
