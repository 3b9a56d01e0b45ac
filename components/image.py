"""The component image every AADS component runs in (built from ``components/Dockerfile``),
and the decorator that binds components to it.

Tag the image with the package version; the release workflow pushes it, and the compiled
pipeline YAML names it, so the code a run executes is pinned by the pipeline version. The
image already has `kfp` and `aads` installed, so components do not pip-install anything at
start (pods need no network access to a package index and run as non-root). The registry is
named once, in ``config/cluster.yaml``: the pipeline sets every task's image from it
(`pipelines.training.build_pipeline`); this default only names the image for a bare component.
"""

from functools import partial

from kfp import dsl

COMPONENT_IMAGE = "ghcr.io/aads-platform/aads-components:0.1.0"

aads_component = partial(dsl.component, base_image=COMPONENT_IMAGE, install_kfp_package=False)
