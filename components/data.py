"""Data preparation components: the run's platform spec, then the images."""

from kfp.dsl import Dataset, Metrics, Output

from components.image import aads_component


@aads_component
def resolve_config(config_uri: str, config_yaml: str, crops: list) -> str:
    """The platform spec every later step reads (`config_yaml` text, else the file at
    `config_uri`), validated, with every crop to train configured in it."""
    from aads.cluster import spec_text
    from aads.config import parse_config_text

    text = spec_text(config_uri, config_yaml)
    config = parse_config_text(text, "config")
    for crop in crops:
        config.crop(str(crop))  # an unknown crop fails here, naming the configured ones
    return text


@aads_component
def preprocess(config: str, data_uri: str, manifest: Output[Dataset], stats: Output[Metrics]):
    """Check, de-duplicate, split and phase-assign the images at `data_uri` (path or s3://)."""
    from pathlib import Path

    from aads.config import parse_config_text
    from aads.steps import preprocess as run

    numbers = run(parse_config_text(config, "config parameter"), data_uri, Path(manifest.path))
    for name, value in numbers.items():
        stats.log_metric(name, value)
