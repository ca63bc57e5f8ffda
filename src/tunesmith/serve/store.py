"""SQLite store of files, jobs, events and checkpoints (being written)."""

from pathlib import Path


class JobStore:
    def __init__(self, path: Path):
        self.path = path
