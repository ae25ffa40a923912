"""Objective heads, their losses, and the composer that weights them."""

__all__: list[str] = []
