"""Plant image data: synthetic generation, ingest into a manifest, splits, torch datasets."""
