"""AADS pipeline definitions (KFP v2), their compiled YAML, and the `aads pipeline` commands."""
