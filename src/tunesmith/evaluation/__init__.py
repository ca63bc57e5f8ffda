"""Evaluation: held-out metrics, base vs fine-tuned comparison, the eval command."""
