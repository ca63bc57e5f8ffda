"""Exports: a registry version (or a base model) written for other tools — a merged Hugging Face folder, a PEFT
adapter, a GGUF file for llama.cpp and Ollama — each loaded back the way its users load it and checked against
the model tunesmith serves."""
