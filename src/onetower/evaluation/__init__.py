"""Zero-shot evaluation of pretrained models: retrieval (R@K, optional ITM re-ranking) and
classification from prompt templates. ``onetower.evaluation.zero_shot.evaluate_run``
evaluates a finished pretraining run (``recipes/evaluate.py``); the retrieval metric itself is
``onetower.retrieval_metrics`` (shared with pretraining's held-out evaluation).
"""
