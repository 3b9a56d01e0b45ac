"""DoRA (Liu et al., ICML 2024) for phase 1, through PEFT: `config` holds its settings
(``adapter.dora``), `model` applies, saves, loads and merges it.

This package's ``__init__`` imports nothing: `aads.config` imports `config`, and a spec must
stay loadable without torch or PEFT being imported.
"""
