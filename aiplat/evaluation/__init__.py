"""Evaluation of candidate models, the promotion gate, and the `champion` alias in the registry."""
