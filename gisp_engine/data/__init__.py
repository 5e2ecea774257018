"""Where text comes from: calibration text, WikiText-2, samplers and the BOS policy of text windows (``text``), the
decision tasks, GSM8K and custom task files with lm-eval's prompts (``tasks``), and what a browser may hand in
(``uploads``, checked by those loaders).

May import ``model`` (a family's BOS policy) and ``core``.
"""
