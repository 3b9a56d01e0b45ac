"""Training phases of a crop adapter: each reads a manifest (and the previous package), trains
with the shared loop, evaluates, and writes a new adapter package."""
