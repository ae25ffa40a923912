"""Zero-shot evaluation of pretrained models: retrieval and classification.

``onetower.evaluation.metrics`` holds the metrics (imported by pretraining's held-out
evaluation too); ``onetower.evaluation.zero_shot`` evaluates a finished pretraining run
(``recipes/evaluate.py``).
"""
