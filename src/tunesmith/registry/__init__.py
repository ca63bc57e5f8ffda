"""Registry: immutable model versions (store) and writing a finished run into it (publish)."""
