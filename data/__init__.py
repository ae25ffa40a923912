"""Datasets, transforms, collators, masking and the synthetic world (knows no model)."""

from onetower.data import keys

__all__ = ["keys"]
