"""Loaded models, bounded in memory (being written)."""


class ModelPool:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
