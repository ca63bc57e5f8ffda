"""``tunesmith serve``: an OpenAI-compatible HTTP API for using and making fine-tuned models."""
