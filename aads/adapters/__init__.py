"""Crop adapters: DoRA (phase 1), SD-LoRA (phase 2), CONEC-LoRA (phase 3), heads, packages."""
