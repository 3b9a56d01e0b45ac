"""Data preparation component."""

from kfp.dsl import Dataset, Metrics, Output

from components.image import aads_component


@aads_component
def preprocess(config: str, data_uri: str, manifest: Output[Dataset], stats: Output[Metrics]):
    """Check, de-duplicate, split and phase-assign the images at `data_uri` (path or s3://)."""
    from pathlib import Path

    from aads.config import parse_config_text
    from aads.steps import preprocess as run

    numbers = run(parse_config_text(config, "config parameter"), data_uri, Path(manifest.path))
    for name, value in numbers.items():
        stats.log_metric(name, value)
