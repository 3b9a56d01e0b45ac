"""Pin what each image installs: ``requirements/<image>.txt`` from pip's own resolver.

    python requirements/lock.py            # (re)write requirements/serving.txt, components.txt
    python requirements/lock.py --sizes    # and print what each image carries that the other
                                           # does not, in installed megabytes

Each image installs the core dependencies of pyproject.toml plus one extra (``serving``:
KServe; ``pipelines``: the KFP SDK, and psycopg2 for the chart's MLflow on PostgreSQL). pip
resolves them (``pip install --dry-run --ignore-installed --report``) for the images' Python
and platform; torch and the CUDA wheels it pulls are left out (the Dockerfiles install the
pinned torch from its own index first, in a cached layer). Sizes are the installed sizes from
the dist-info RECORD files of this virtualenv (pip's report has no sizes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {
    "serving": ["serving"],
    "components": ["pipelines"],
}
EXTRA_PINS = {"components": ["psycopg2-binary>=2.9,<3"]}
TORCH_STACK = ("torch", "triton", "nvidia-", "cuda-")


def requirements(image: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in IMAGES[image]:
        wanted += project["optional-dependencies"][extra]
    return wanted + EXTRA_PINS.get(image, [])


def resolve(image: str) -> dict[str, str]:
    """{name: version} pip would install for the image."""
    with tempfile.TemporaryDirectory() as tmp:
        req, report = Path(tmp) / "req.txt", Path(tmp) / "report.json"
        req.write_text("\n".join(requirements(image)) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        command += ["--quiet", "--report", str(report), "-r", str(req)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}


def installed_bytes(name: str) -> int:
    """Installed size of a distribution in this environment (0 when absent)."""
    try:
        files = distribution(name).files or []
    except PackageNotFoundError:
        return 0
    return sum(f.size or 0 for f in files)


def write_lock(image: str, pins: dict[str, str]) -> Path:
    path = ROOT / "requirements" / f"{image}.txt"
    lines = [
        f"# The {image} image's pinned packages (besides torch): `python requirements/lock.py`.",
        f"# Resolved from pyproject.toml's dependencies + extras {IMAGES[image]}.",
    ]
    lines += [
        f"{name}=={version}"
        for name, version in sorted(pins.items())
        if name != "aads" and not name.startswith(TORCH_STACK)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", action="store_true", help="print the size difference")
    args = parser.parse_args()
    resolved = {image: resolve(image) for image in IMAGES}
    for image, pins in resolved.items():
        print(f"wrote {write_lock(image, pins)} ({len(pins)} packages)")
    if args.sizes:
        serving, components = set(resolved["serving"]), set(resolved["components"])
        for image, only in (
            ("serving", serving - components),
            ("components", components - serving),
        ):
            total = sum(installed_bytes(n) for n in only)
            print(f"only in {image}: {len(only)} packages, {total / 1e6:.1f} MB installed:")
            print("  " + ", ".join(sorted(only)))


if __name__ == "__main__":
    main()
