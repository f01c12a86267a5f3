"""Checks that a conversion kept the model: the reference forward pass compared on both checkpoints."""

from .logits import VerifyReport, verify

__all__ = ["VerifyReport", "verify"]
