"""CONEC-LoRA (Paeedeh et al., arXiv 2510.16077) for domain-incremental plant-disease diagnosis:
shared LoRAs in early blocks trained under distillation, one frozen LoRA set per domain in late
blocks, a domain selector routing each image in one forward pass.

`config` holds the settings (``adapter.conec``), `layer` the maths on one Linear, `selector`
the domain selectors, `model` the wiring.

This package's ``__init__`` imports nothing: `aads.config` imports `config`, and a spec must
stay loadable without torch being imported. Import from the modules.
"""
