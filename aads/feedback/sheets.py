"""Contact sheets: one PNG per cluster, a titled grid of thumbnails a person can judge at a
glance (is this one disease? a camera problem? not a plant at all?)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps

from aads.atomic import atomic_write
from aads.backbone import ImageDecodeError, open_image, to_rgb

MAX_THUMBNAILS = 36
THUMBNAIL = 160


def contact_sheet(
    images: Sequence[bytes | Path],
    captions: Sequence[str],
    title: str,
    path: Path,
    *,
    columns: int = 6,
    limit: int = MAX_THUMBNAILS,
) -> Path:
    """Write a grid of up to `limit` thumbnails (encoded bytes or files, in the order given)
    with a caption each; an image that cannot be decoded shows as a grey square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(zip(images, captions, strict=True))[:limit]
    cols = max(1, min(columns, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.1 * cols, 2.3 * rows + 0.8), dpi=100, squeeze=False
    )
    try:
        fig.suptitle(title, fontsize=12 if cols > 2 else 9, wrap=True)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, (data, caption) in zip(axes.flat, shown, strict=False):
            ax.imshow(_thumbnail(data))
            ax.set_title(caption, fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / (2.3 * rows + 0.8)))
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def _thumbnail(data: bytes | Path) -> Image.Image:
    try:
        img = to_rgb(open_image(data))
    except ImageDecodeError:
        return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 200, 200))
    img = ImageOps.contain(img, (THUMBNAIL, THUMBNAIL))  # small captures are scaled up too
    out = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (255, 255, 255))
    out.paste(img, ((THUMBNAIL - img.width) // 2, (THUMBNAIL - img.height) // 2))
    return out
