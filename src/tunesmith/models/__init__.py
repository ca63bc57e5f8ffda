"""Models: base-model resolution and conversion (base), loading and LoRA (load)."""
