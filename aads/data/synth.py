"""Deterministic synthetic plant images, so the platform can be demoed and tested end to end.

Real corpora (PlantVillage, PlantDoc) cannot be downloaded in CI or on an air-gapped cluster,
and tests need data whose ground truth is known exactly. This module draws that data. Every
image shows one plant part of one crop, carrying one disease pattern, under one imaging domain,
and each factor leaves a learnable trace: the crop and the part set the silhouette, venation
and colour; the disease paints a pattern inside the part; the domain changes global image
statistics (background, light, noise, blur, compression). Each image draws from its own RNG,
seeded through a stable hash of (seed, crop, part, class, domain, index), so a seed reproduces
byte-identical files in any generation order.

Names the renderer has no picture for still render: an unknown crop gets a shape family and
hue derived from its name, an unknown disease a pattern with its own colour and density. Only
an unknown domain is an error, because a domain shift that silently renders as ``base`` would
make a phase-3 experiment meaningless.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from aads.atomic import atomic_write, atomic_write_text
from aads.config import BASE_DOMAIN, PlatformConfig, SynthSettings
from aads.data.layout import LAYOUT_MARKER
from aads.errors import BadInput

JPEG_QUALITY = 92
_SUPERSAMPLE = 2
"""Parts are drawn at twice the output size and box-reduced: cheap anti-aliasing."""
_REF_COVER = 0.2
"""Canvas share of a typical leaf; lesion counts scale with a part's cover relative to it."""

RGB = tuple[float, float, float]
Point = tuple[float, float]
Array = np.ndarray


class SynthError(BadInput):
    """A request the synthesizer cannot draw; the message names what it can draw instead."""


@dataclass(frozen=True)
class SynthReport:
    """What a run wrote, counted the way the CLI summarises it."""

    root: Path
    images: int
    per_domain: dict[str, int]
    per_crop: dict[str, int]


# --------------------------------------------------------------------------- hashing


def _digest(*fields: object) -> bytes:
    """sha256 over the fields; Python's `hash()` is salted per process, so it cannot seed."""
    return hashlib.sha256("\x1f".join(map(str, fields)).encode()).digest()


def _name_rng(*fields: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(_digest(*fields)[:8], "big"))


def image_rng(
    seed: int, crop: str, part: str, disease: str, domain: str, index: int
) -> np.random.Generator:
    """The RNG of one image, independent of every other image and of generation order."""
    return _name_rng("aads-synth-v1", seed, crop, part, disease, domain, index)


# --------------------------------------------------------------------------- small helpers


def _ramp(x: Array, lo: float, hi: float) -> Array:
    """Smoothstep from 0 at `lo` to 1 at `hi`: soft-edged thresholds for organic patches."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _noise(rng: np.random.Generator, w: int, cells: int) -> Array:
    """Smooth value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    up = np.asarray(grid.resize((w, w), Image.Resampling.BICUBIC))
    return np.clip(up, 0.0, 1.0)


def _blurred(alpha: Array, radius: float) -> Array:
    img = Image.fromarray(np.uint8(np.clip(alpha, 0, 1) * 255))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


def _tint(rgb: RGB, shift: Array) -> RGB:
    r, g, b = np.clip(np.asarray(rgb) + shift, 0, 255)
    return float(r), float(g), float(b)


def _jitter(rgb: RGB, rng: np.random.Generator, amount: float) -> RGB:
    gain = rng.uniform(1 - amount, 1 + amount) * rng.uniform(1 - amount / 2, 1 + amount / 2, 3)
    r, g, b = np.clip(np.asarray(rgb) * gain, 0, 255)
    return float(r), float(g), float(b)


def _to_image(arr: Array) -> Image.Image:
    return Image.fromarray(np.uint8(np.clip(arr + 0.5, 0, 255)))


def _px(length: float) -> int:
    """A line width in whole pixels, never 0: tiny images must still draw every stroke."""
    return max(1, round(length))


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: object = 255) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _blob(x: float, y: float, r: float, rng: np.random.Generator, n: int = 9) -> list[Point]:
    """An irregular round polygon: lesions are never perfect circles."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    radii = r * rng.uniform(0.65, 1.2, n)
    return list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles), strict=True))


def _curve(p0: Point, p1: Point, p2: Point, n: int = 24) -> list[Point]:
    """Quadratic Bezier through control point `p1`: stems and rachises bend, not kink."""
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [(float(x), float(y)) for x, y in pts]


# --------------------------------------------------------------------------- part geometry


def _ovate(s: Array) -> Array:
    return np.sin(np.pi * s**0.75) ** 0.9


def _strap(s: Array) -> Array:
    return np.minimum(1.0, s / 0.06) ** 0.5 * (1 - s**3) ** 0.8


def _lance(s: Array) -> Array:
    return np.sin(np.pi * s) ** 0.7 * (1 - 0.35 * s)


def _bell(s: Array) -> Array:
    shoulder = 1 - 0.45 * np.clip((s - 0.75) / 0.25, 0, 1) ** 2
    return np.minimum(1.0, s / 0.12) ** 0.5 * (0.68 + 0.32 * s) * shoulder


def _cob(s: Array) -> Array:
    return np.minimum(1.0, s / 0.04) ** 0.5 * (1 - s**3) ** 0.45


def _pod(s: Array) -> Array:
    return np.sin(np.pi * s) ** 0.35 * (1 + 0.08 * np.sin(2 * np.pi * 5 * s))


@dataclass(frozen=True)
class _Lamina:
    """A blade-like outline along a bent midline: the geometry of leaves, leaflets, husks and
    pods, plus the tracks along it that veins, creases and kernel rows follow."""

    x: Array
    y: Array
    half: Array
    nx: float
    ny: float

    @classmethod
    def grow(
        cls,
        base: Point,
        length: float,
        width: float,
        angle: float,
        profile: Callable[[Array], Array],
        *,
        bend: float = 0.0,
        teeth: int = 0,
        tooth: float = 0.0,
    ) -> _Lamina:
        """`angle` is degrees clockwise from pointing up; `teeth` serrates the margin."""
        s = np.linspace(0.0, 1.0, 48)
        half = width / 2 * profile(s)
        if teeth:
            half = half * (1 - tooth * ((s * teeth) % 1.0))
        a = math.radians(angle)
        ax, ay, nx, ny = math.sin(a), -math.cos(a), math.cos(a), math.sin(a)
        off = bend * length * s**2
        x = base[0] + s * length * ax + off * nx
        y = base[1] + s * length * ay + off * ny
        return cls(x, y, half, nx, ny)

    def track(self, frac: float, start: float = 0.0, stop: float = 1.0) -> list[Point]:
        """Points at `frac` of the half width (-1 left margin, 0 midline, 1 right margin)."""
        n = len(self.x)
        sl = slice(int(start * (n - 1)), int(stop * (n - 1)) + 1)
        xs = self.x[sl] + frac * self.half[sl] * self.nx
        ys = self.y[sl] + frac * self.half[sl] * self.ny
        return list(zip(xs.tolist(), ys.tolist(), strict=True))

    def outline(self) -> list[Point]:
        return self.track(1.0) + self.track(-1.0)[::-1]

    def at(self, s: float) -> Point:
        i = int(s * (len(self.x) - 1))
        return float(self.x[i]), float(self.y[i])


@dataclass
class _Part:
    """A plant part in its own upright frame: colour everywhere, `mask` where the plant is.

    Colour extends past the mask so resampling at the silhouette blends plant with plant, not
    with black; disease painters are clipped to the mask instead."""

    rgb: Array
    mask: Array
    gloss: float

    @property
    def width(self) -> int:
        return self.mask.shape[0]


class _Sketch:
    """Grey layers one part family draws into: silhouette, pale detail (veins), dark detail
    (creases, kernel gaps, nodes) and a second-colour region (calyx, husk)."""

    def __init__(self, w: int) -> None:
        self.w = w
        self.layers = {k: Image.new("L", (w, w)) for k in ("shape", "pale", "dark", "accent")}
        self.shape, self.pale, self.dark, self.accent = (
            ImageDraw.Draw(self.layers[k]) for k in ("shape", "pale", "dark", "accent")
        )

    def colour(self, base: RGB, accent: RGB, rng: np.random.Generator, gloss: float) -> _Part:
        w = self.w
        grey = {k: np.asarray(v, np.float32) / 255.0 for k, v in self.layers.items()}
        rgb = np.empty((w, w, 3), np.float32)
        rgb[:] = _jitter(base, rng, 0.06)
        rgb *= (0.9 + 0.2 * _noise(rng, w, 5))[..., None]
        second, pale, dark = (grey[k][..., None] for k in ("accent", "pale", "dark"))
        rgb += (np.asarray(_jitter(accent, rng, 0.05), np.float32) - rgb) * second
        rgb += (np.minimum(rgb * 1.3 + 30, 255) - rgb) * 0.65 * pale
        rgb *= 1 - 0.5 * dark
        return _Part(rgb, grey["shape"], gloss)


def _leaflet(k: _Sketch, base: Point, length: float, width: float, angle: float) -> None:
    leaf = _Lamina.grow(base, length, width, angle, _ovate, teeth=7, tooth=0.22)
    k.shape.polygon(leaf.outline(), fill=255)
    k.pale.line(leaf.track(0, 0, 0.9), fill=160, width=_px(k.w / 100))


def _compound_leaf(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Tomato-like: serrated leaflets in pairs along a rachis, a terminal leaflet on top."""
    k, c = _Sketch(w), w / 2
    top = (c + w * rng.uniform(-0.04, 0.04), c - 0.2 * w)
    rachis = _curve((c, c + 0.46 * w), (c + w * rng.uniform(-0.07, 0.07), c + 0.1 * w), top)
    k.shape.line(rachis, fill=255, width=max(2, int(w * 0.02)))
    k.pale.line(rachis, fill=140, width=_px(w * 0.012))
    _leaflet(k, top, 0.27 * w * rng.uniform(0.9, 1.1), 0.15 * w, rng.uniform(-10, 10))
    for t, size in ((0.3, 0.9), (0.55, 1.0), (0.8, 0.85), (0.43, 0.3), (0.68, 0.3)):
        x, y = rachis[int(t * (len(rachis) - 1))]
        for side in (-1, 1):
            angle = side * rng.uniform(55, 78)
            length = 0.24 * w * size * rng.uniform(0.85, 1.1)
            _leaflet(k, (x, y), length, length * 0.56, angle)
    return k.colour(look.leaf_rgb, look.leaf_rgb, rng, look.gloss)


def _simple_leaf(
    look: _Look, rng: np.random.Generator, w: int, profile: Callable[[Array], Array]
) -> _Part:
    """Pepper-like ovate or willow-like lanceolate: one lamina, pinnate veins, a petiole."""
    k, c = _Sketch(w), w / 2
    wide = profile is _ovate
    base = (c, c + (0.34 if wide else 0.40) * w)
    leaf = _Lamina.grow(
        base,
        (0.78 if wide else 0.86) * w,
        (0.40 if wide else 0.24) * w * rng.uniform(0.9, 1.1),
        rng.uniform(-6, 6),
        profile,
        bend=rng.uniform(-0.08, 0.08),
    )
    k.shape.polygon(leaf.outline(), fill=255)
    k.shape.line([(c, c + 0.47 * w), base], fill=255, width=max(2, int(w * 0.025)))
    k.pale.line(leaf.track(0, 0, 0.95), fill=190, width=_px(w * 0.012))
    for s in np.linspace(0.12, 0.72, 6):
        for side in (-1, 1):
            vein = [
                leaf.at(s),
                *leaf.track(side * 0.55, s + 0.06, s + 0.08),
                leaf.track(side * 0.9, s + 0.16, s + 0.16)[0],
            ]
            k.pale.line(vein, fill=120, width=_px(w / 160))
    return k.colour(look.leaf_rgb, look.leaf_rgb, rng, look.gloss)


def _ovate_leaf(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    return _simple_leaf(look, rng, w, _ovate)


def _lanceolate_leaf(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    return _simple_leaf(look, rng, w, _lance)


def _blade_leaf(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Corn-like: a long strap that arcs, a pale midrib and parallel veins."""
    k, c = _Sketch(w), w / 2
    leaf = _Lamina.grow(
        (c + w * rng.uniform(-0.08, 0.02), c + 0.47 * w),
        0.93 * w,
        0.22 * w * rng.uniform(0.9, 1.1),
        rng.uniform(-4, 4),
        _strap,
        bend=rng.uniform(0.04, 0.13) * rng.choice([-1, 1]),
    )
    k.shape.polygon(leaf.outline(), fill=255)
    k.pale.line(leaf.track(0, 0, 0.93), fill=230, width=max(2, int(w * 0.022)))
    for frac in (-0.75, -0.5, -0.25, 0.25, 0.5, 0.75):
        k.pale.line(leaf.track(frac, 0.02, 0.9), fill=110, width=1)
    return k.colour(look.leaf_rgb, look.leaf_rgb, rng, look.gloss)


def _palmate_leaf(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Grape- or maple-like: lobes radiating from the petiole tip, one vein per lobe."""
    k, c = _Sketch(w), w / 2
    lobes, centre, radius = look.lobes, (c, c + 0.06 * w), 0.36 * w * rng.uniform(0.9, 1.05)
    theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    lobe = np.abs(np.cos(lobes * theta / 2)) ** 1.5
    r = radius * (0.5 + 0.5 * lobe) * (1 - 0.06 * ((theta * 40 / np.pi) % 1.0))
    outline = list(zip(centre[0] + r * np.sin(theta), centre[1] - r * np.cos(theta), strict=True))
    k.shape.polygon(outline, fill=255)
    k.shape.line([centre, (c, c + 0.47 * w)], fill=255, width=max(2, int(w * 0.025)))
    for i in range(lobes):
        a = 2 * np.pi * i / lobes
        tip = (centre[0] + 0.85 * radius * np.sin(a), centre[1] - 0.85 * radius * np.cos(a))
        k.pale.line([centre, tip], fill=170, width=_px(w / 120))
    return k.colour(look.leaf_rgb, look.leaf_rgb, rng, look.gloss)


def _round_fruit(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Tomato-like: a slightly lobed sphere with a star-shaped green calyx."""
    k, c = _Sketch(w), w / 2
    rx, ry = 0.30 * w * rng.uniform(0.92, 1.05), 0.27 * w * rng.uniform(0.92, 1.05)
    theta = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    lobing = 1 + 0.03 * np.cos(5 * theta + rng.uniform(0, 6.3))
    xs, ys = c + rx * lobing * np.cos(theta), c + 0.03 * w + ry * lobing * np.sin(theta)
    k.shape.polygon(list(zip(xs, ys, strict=True)), fill=255)
    top = (c, c + 0.03 * w - ry + 0.05 * w)
    star = np.linspace(0, 2 * np.pi, 12, endpoint=False) + rng.uniform(0, 1)
    sr = np.where(np.arange(12) % 2 == 0, 0.14 * w, 0.04 * w)
    calyx = list(zip(top[0] + sr * np.cos(star), top[1] + 0.8 * sr * np.sin(star), strict=True))
    for layer in (k.shape, k.accent):
        layer.polygon(calyx, fill=255)
        layer.line([top, (top[0] + 0.02 * w, top[1] - 0.1 * w)], fill=255, width=_px(0.035 * w))
    return k.colour(_pick(look.fruit_rgbs, rng), look.accent_rgb, rng, 0.7)


def _bell_fruit(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Pepper-like: an elongated bell with a lobed tip, creases, and a thick curved stalk."""
    k, c = _Sketch(w), w / 2
    body = _Lamina.grow((c, c + 0.3 * w), 0.62 * w, 0.46 * w * rng.uniform(0.85, 1.05), 0, _bell)
    k.shape.polygon(body.outline(), fill=255)
    for dx in (-0.09, 0.0, 0.09):
        _disc(k.shape, c + dx * w, c + 0.28 * w, 0.06 * w)
    for frac in (-0.4, 0.4):
        k.dark.line(body.track(frac, 0.05, 0.85), fill=110, width=_px(w / 90))
    shoulder = body.at(0.97)
    stalk = _curve(shoulder, (shoulder[0], shoulder[1] - 0.1 * w), (c + 0.07 * w, c - 0.46 * w))
    for layer in (k.shape, k.accent):
        layer.ellipse(
            (c - 0.09 * w, shoulder[1] - 0.03 * w, c + 0.09 * w, shoulder[1] + 0.04 * w), fill=255
        )
        layer.line(stalk, fill=255, width=_px(0.045 * w))
    return k.colour(_pick(look.fruit_rgbs, rng), look.accent_rgb, rng, 0.8)


def _ear_fruit(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Corn-like: a cob with a kernel grid, husk leaves at its base and silk at its tip."""
    k, c = _Sketch(w), w / 2
    cob = _Lamina.grow((c, c + 0.38 * w), 0.78 * w, 0.26 * w * rng.uniform(0.9, 1.1), 0, _cob)
    k.shape.polygon(cob.outline(), fill=255)
    rows = np.linspace(-0.85, 0.85, 7)
    kernel = 0.26 * w / 8
    for s in np.arange(0.04, 0.95, kernel / (0.78 * w)):
        for frac in rows:
            x, y = cob.track(frac, s, s)[0]
            k.pale.ellipse(
                (x - kernel * 0.4, y - kernel * 0.42, x + kernel * 0.4, y + kernel * 0.42), fill=120
            )
    k.dark.polygon(cob.outline(), outline=160)
    tip = cob.at(1.0)
    for dx in (-0.03, 0.0, 0.03):
        silk = _curve(
            tip, (tip[0] + dx * w, tip[1] - 0.05 * w), (tip[0] + 2 * dx * w, tip[1] - 0.08 * w)
        )
        k.shape.line(silk, fill=255, width=_px(w / 120))
        k.dark.line(silk, fill=200, width=_px(w / 120))
    for side in (-1, 1):
        husk = _Lamina.grow(
            (c, c + 0.47 * w),
            0.5 * w,
            0.22 * w,
            side * rng.uniform(4, 12),
            _lance,
            bend=-side * 0.08,
        )
        for layer in (k.shape, k.accent):
            layer.polygon(husk.outline(), fill=255)
    return k.colour(_pick(look.fruit_rgbs, rng), look.accent_rgb, rng, 0.15)


def _pod_fruit(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Bean-like: a long curved pod with seed bulges."""
    k, c = _Sketch(w), w / 2
    pod = _Lamina.grow(
        (c - 0.05 * w, c + 0.44 * w), 0.88 * w, 0.15 * w, rng.uniform(-5, 5), _pod, bend=0.18
    )
    k.shape.polygon(pod.outline(), fill=255)
    for s in np.linspace(0.12, 0.88, 6):
        x, y = pod.at(s)
        _disc(k.pale, x, y, 0.04 * w, fill=70)
    k.dark.line(pod.track(0.85, 0.05, 0.95), fill=90, width=_px(w / 120))
    return k.colour(_pick(look.fruit_rgbs, rng), look.accent_rgb, rng, 0.4)


def _stem_path(k: _Sketch, rng: np.random.Generator, width: float) -> list[Point]:
    w = k.w
    c = w / 2
    path = _curve(
        (c + w * rng.uniform(-0.05, 0.05), c + 0.48 * w),
        (c + w * rng.uniform(-0.12, 0.12), c),
        (c + w * rng.uniform(-0.05, 0.05), c - 0.48 * w),
    )
    k.shape.line(path, fill=255, width=_px(width), joint="curve")
    return path


def _hairy_stem(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Tomato-like: thin, with a side petiole and pale glandular hairs."""
    k = _Sketch(w)
    width = w * look.stem_width
    path = _stem_path(k, rng, width)
    x, y = path[len(path) // 2]
    side = rng.choice([-1, 1])
    twig = _curve((x, y), (x + side * 0.15 * w, y - 0.05 * w), (x + side * 0.3 * w, y - 0.25 * w))
    k.shape.line(twig, fill=255, width=_px(width * 0.6), joint="curve")
    for px, py in (path + twig)[1:-1]:
        for _ in range(3):
            a = rng.uniform(0, 2 * np.pi)
            r0, r1 = width * 0.4, width * rng.uniform(0.7, 1.1)
            hair = [
                (px + r0 * math.cos(a), py + r0 * math.sin(a)),
                (px + r1 * math.cos(a), py + r1 * math.sin(a)),
            ]
            k.shape.line(hair, fill=255, width=1)
            k.pale.line(hair, fill=200, width=1)
    return k.colour(look.stem_rgb, look.stem_rgb, rng, 0.15)


def _forked_stem(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Pepper-like: smooth, forking in two at a swollen dark node."""
    k, c = _Sketch(w), w / 2
    width = w * look.stem_width
    fork = (c + w * rng.uniform(-0.05, 0.05), c - 0.02 * w)
    trunk = _curve((c + w * rng.uniform(-0.04, 0.04), c + 0.48 * w), (c, c + 0.2 * w), fork)
    k.shape.line(trunk, fill=255, width=_px(width), joint="curve")
    for side in (-1, 1):
        end = (fork[0] + side * w * rng.uniform(0.2, 0.3), c - 0.45 * w)
        branch = _curve(fork, (fork[0] + side * 0.05 * w, fork[1] - 0.2 * w), end)
        k.shape.line(branch, fill=255, width=_px(width * 0.8), joint="curve")
    _disc(k.shape, *fork, width * 0.75)
    k.dark.line(
        [(fork[0] - width * 0.7, fork[1]), (fork[0] + width * 0.7, fork[1])],
        fill=150,
        width=_px(w / 80),
    )
    return k.colour(look.stem_rgb, look.stem_rgb, rng, 0.45)


def _jointed_stem(look: _Look, rng: np.random.Generator, w: int) -> _Part:
    """Corn-like: a thick culm with swollen dark nodes and parallel sheath veins."""
    k, c = _Sketch(w), w / 2
    width = w * look.stem_width
    x0, x1 = c + w * rng.uniform(-0.05, 0.05), c + w * rng.uniform(-0.05, 0.05)
    culm = _Lamina.grow(
        (x0, c + 0.49 * w),
        0.98 * w,
        width,
        math.degrees(math.atan2(x1 - x0, 0.98 * w)),
        np.ones_like,
    )
    k.shape.polygon(culm.outline(), fill=255)
    for frac in (-0.6, -0.3, 0.0, 0.3, 0.6):
        k.pale.line(culm.track(frac), fill=90, width=1)
    for s in np.arange(rng.uniform(0.05, 0.2), 1.0, 0.24):
        x, y = culm.at(s)
        k.shape.ellipse((x - width * 0.6, y - 0.018 * w, x + width * 0.6, y + 0.018 * w), fill=255)
        k.dark.line([(x - width * 0.6, y), (x + width * 0.6, y)], fill=170, width=max(2, w // 60))
    return k.colour(look.stem_rgb, look.stem_rgb, rng, 0.2)


_PartBuilder = Callable[["_Look", np.random.Generator, int], _Part]
_LEAVES: dict[str, _PartBuilder] = {
    "compound": _compound_leaf,
    "ovate": _ovate_leaf,
    "blade": _blade_leaf,
    "palmate": _palmate_leaf,
    "lanceolate": _lanceolate_leaf,
}
_FRUITS: dict[str, _PartBuilder] = {
    "round": _round_fruit,
    "bell": _bell_fruit,
    "ear": _ear_fruit,
    "pod": _pod_fruit,
}
_STEMS: dict[str, _PartBuilder] = {
    "hairy": _hairy_stem,
    "forked": _forked_stem,
    "jointed": _jointed_stem,
}


def _pick(options: tuple[RGB, ...], rng: np.random.Generator) -> RGB:
    return options[int(rng.integers(len(options)))]


# --------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class _Look:
    """How one crop's parts are drawn: a shape family and base colour per part kind."""

    leaf: str
    leaf_rgb: RGB
    fruit: str
    fruit_rgbs: tuple[RGB, ...]
    accent_rgb: RGB
    stem: str
    stem_rgb: RGB
    stem_width: float
    gloss: float
    lobes: int = 5


_LOOKS = {
    "tomato": _Look(
        "compound", (74, 138, 52), "round", ((205, 45, 35),), (60, 120, 45),
        "hairy", (100, 145, 65), 0.045, 0.15,
    ),
    "pepper": _Look(
        "ovate", (30, 92, 38), "bell", ((45, 125, 40), (185, 32, 28)), (50, 105, 40),
        "forked", (48, 100, 45), 0.07, 0.55,
    ),
    "corn": _Look(
        "blade", (145, 178, 74), "ear", ((238, 200, 70),), (160, 185, 100),
        "jointed", (155, 170, 85), 0.16, 0.1,
    ),
}  # fmt: skip
_CROP_ALIASES = {"capsicum": "pepper", "chili": "pepper", "maize": "corn"}


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return r * 255, g * 255, b * 255


@functools.cache
def _look(crop: str) -> _Look:
    """The known look when a word of the name is a known crop (``pepper_bell``), else one
    derived from the name's hash so every configured crop stays recognisable."""
    for word in crop.split("_"):
        if word in _LOOKS or word in _CROP_ALIASES:
            return _LOOKS[_CROP_ALIASES.get(word, word)]
    rng = _name_rng("look", crop)
    leaf_hue = rng.uniform(0.2, 0.4)
    fruit = _hsv(rng.uniform(0, 1), rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.9))
    return _Look(
        leaf=str(rng.choice(sorted(_LEAVES))),
        leaf_rgb=_hsv(leaf_hue, rng.uniform(0.45, 0.75), rng.uniform(0.4, 0.7)),
        fruit=str(rng.choice(sorted(_FRUITS))),
        fruit_rgbs=(fruit,),
        accent_rgb=_hsv(leaf_hue, 0.6, 0.5),
        stem=str(rng.choice(sorted(_STEMS))),
        stem_rgb=_hsv(leaf_hue + rng.uniform(-0.05, 0.05), 0.5, 0.55),
        stem_width=float(rng.uniform(0.04, 0.16)),
        gloss=float(rng.uniform(0.1, 0.5)),
        lobes=int(rng.choice([3, 5, 7])),
    )


_PART_WORDS = {
    "leaf": ("leaf", "leaves", "foliage", "needle", "frond"),
    "fruit": ("fruit", "pod", "ear", "cob", "berry", "grain", "seed", "tuber", "head", "boll"),
    "stem": ("stem", "stalk", "branch", "trunk", "vine", "cane", "shoot", "culm", "root"),
}


@functools.cache
def _part_kind(part: str) -> str:
    words = part.split("_")
    for kind, names in _PART_WORDS.items():
        if any(word in names for word in words):
            return kind
    return str(_name_rng("part", part).choice(sorted(_PART_WORDS)))


def _draw_part(crop: str, part: str, rng: np.random.Generator, w: int) -> _Part:
    look = _look(crop)
    kind = _part_kind(part)
    if kind == "leaf":
        return _LEAVES[look.leaf](look, rng, w)
    if kind == "fruit":
        return _FRUITS[look.fruit](look, rng, w)
    return _STEMS[look.stem](look, rng, w)


# --------------------------------------------------------------------------- diseases


@dataclass(frozen=True)
class _Disease:
    """A disease pattern plus the class-specific variation that keeps two classes sharing a
    pattern (``bacterial_spot``, ``septoria_leaf_spot``) apart."""

    pattern: str
    density: float = 1.0
    scale: float = 1.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def rgb(self, base: RGB) -> RGB:
        return _tint(base, np.asarray(self.tint))


def _count(p: _Part, n: float) -> int:
    """Lesions per part: fewer on small parts, but not so few that a thin stem hides its
    disease (hence the square root)."""
    return max(1, round(n * math.sqrt(float(p.mask.mean()) / _REF_COVER)))


def _sites(p: _Part, n: int, rng: np.random.Generator) -> Array:
    """`n` random (x, y) points inside the part."""
    inside = np.flatnonzero(p.mask.ravel() > 0.5)
    if inside.size == 0:
        return np.empty((0, 2))
    idx = rng.choice(inside, size=n)
    return np.stack([idx % p.width, idx // p.width], axis=1) + rng.uniform(-0.5, 0.5, (n, 2))


def _layer(w: int, mode: str = "L") -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new(mode, (w, w))
    return img, ImageDraw.Draw(img)


def _alpha(img: Image.Image, blur: float = 0.0) -> Array:
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, np.float32) / 255.0


def _paint(p: _Part, alpha: Array, colour: RGB | Array, opacity: float = 1.0) -> None:
    """Blend `colour` into the part where `alpha` says, never outside the plant."""
    a = (alpha * p.mask * opacity)[..., None]
    p.rgb += (np.asarray(colour, np.float32) - p.rgb) * a


def _margin(p: _Part, width: float) -> Array:
    """1 at the part's edge fading to 0 about `width` pixels inside: where blights start."""
    return _ramp(1.0 - _blurred(p.mask, width), 0.0, 0.5) * p.mask


def _broad(mask: Array, width: float) -> Array:
    """The parts of `mask` wider than `width` (a morphological opening): curling a margin
    away must not erase a thin stem."""
    k = int(width) | 1
    img = Image.fromarray(np.uint8(mask > 0.5) * 255)
    opened = img.filter(ImageFilter.MinFilter(k)).filter(ImageFilter.MaxFilter(k))
    return np.asarray(opened, np.float32) / 255.0


def _spots(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    r = w * 0.021 * d.scale
    (halo, hd), (core, cd) = _layer(w), _layer(w)
    for x, y in _sites(p, _count(p, 26 * d.density), rng):
        rr = r * rng.uniform(0.6, 1.4)
        _disc(hd, x, y, rr * 1.8)
        cd.polygon(_blob(x, y, rr, rng), fill=255)
    _paint(p, _alpha(halo, r * 0.8), d.rgb((205, 195, 80)), 0.6)
    _paint(p, _alpha(core, 0.6), d.rgb((62, 40, 25)), 0.95)


def _rings(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    (halo, hd), (cover, cd) = _layer(w), _layer(w)
    ink, ind = _layer(w, "RGB")
    dark, light = d.rgb((70, 48, 30)), d.rgb((150, 118, 68))
    for x, y in _sites(p, _count(p, 5 * d.density), rng):
        rr = w * 0.065 * d.scale * rng.uniform(0.7, 1.3)
        _disc(hd, x, y, rr * 1.45)
        _disc(cd, x, y, rr)
        rings = int(rng.integers(3, 6))
        for i in range(rings):
            colour = dark if i % 2 == 0 else light
            _disc(ind, x, y, rr * (1 - i / rings), tuple(int(v) for v in colour))
    _paint(p, _alpha(halo, w * 0.01), d.rgb((200, 190, 75)), 0.55)
    _paint(p, _alpha(cover, 0.6), np.asarray(ink, np.float32), 0.95)


def _mosaic(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    cells = max(3, round(6 * d.scale))
    field = 0.6 * _noise(rng, w, cells) + 0.4 * _noise(rng, w, cells * 2 + 1)
    _paint(p, _ramp(field, 0.5, 0.58), d.rgb((190, 205, 85)), 0.8)
    _paint(p, _ramp(-field, -0.45, -0.37), p.rgb * 0.5, 0.85)


def _yellowing(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Chlorosis strongest at the margins, with wavy stretches of the edge rolled under."""
    w = p.width
    _paint(p, 0.45 + 0.55 * _margin(p, w * 0.1), d.rgb((218, 205, 70)), 0.8)
    ys, xs = np.mgrid[0:w, 0:w]
    theta = np.arctan2(ys - w / 2, xs - w / 2)
    wave = np.sin(theta * rng.integers(5, 9) + rng.uniform(0, 6.3)) > 0.0
    rolled = (_margin(p, w * 0.03 * d.scale) > 0.45) * wave * _broad(p.mask, w * 0.06)
    p.mask = p.mask * (1 - rolled)
    _paint(p, _margin(p, w * 0.018), d.rgb((180, 190, 125)), 0.85)


def _blight(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Necrosis creeping in from the margins behind a yellow front."""
    w = p.width
    front = _margin(p, w * 0.07 * d.scale) + 0.9 * (_noise(rng, w, 9) - 0.5)
    _paint(p, _ramp(front, 0.3, 0.48), d.rgb((175, 150, 60)), 0.65)
    texture = (0.8 + 0.4 * _noise(rng, w, 23))[..., None]
    _paint(p, _ramp(front, 0.5, 0.6), np.asarray(d.rgb((60, 42, 28))) * texture, 0.95)


def _rust(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    r = max(1.0, w * 0.009 * d.scale)
    (halo, hd), (pust, pd) = _layer(w), _layer(w)
    for x, y in _sites(p, _count(p, 110 * d.density), rng):
        e = rng.uniform(1.0, 1.9)
        _disc(hd, x, y, r * 2.2)
        pd.ellipse((x - r, y - r * e, x + r, y + r * e), fill=255)
    _paint(p, _alpha(halo, r), d.rgb((195, 185, 90)), 0.35)
    _paint(p, _alpha(pust, 0.4), d.rgb((190, 92, 32)), 0.95)


def _mildew(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    patches = _ramp(_noise(rng, w, max(3, round(5 * d.scale))), 0.48 - 0.08 * d.density, 0.62)
    specks, sd = _layer(w)
    for x, y in _sites(p, _count(p, 40 * d.density), rng):
        _disc(sd, x, y, w * 0.012 * rng.uniform(0.5, 1.5))
    grain = rng.random((w, w), dtype=np.float32)
    powder = np.maximum(patches, _alpha(specks, 1.0)) * (0.55 + 0.45 * grain)
    _paint(p, powder, d.rgb((238, 238, 230)), 0.9)


def _mold(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Velvety olive colonies on one side of the midline, ringed by chlorosis."""
    w = p.width
    cols = p.mask.sum(axis=0)
    midline = float((cols * np.arange(w)).sum() / max(cols.sum(), 1.0))
    xs = (np.arange(w, dtype=np.float32) - midline) / w * rng.choice([-1, 1])
    side = _ramp(np.broadcast_to(xs, (w, w)), -0.01, 0.03)
    field = _noise(rng, w, max(3, round(6 * d.scale)))
    on_side = field[(side * p.mask) > 0.5]
    # Threshold at a quantile of the part's own side, so even a thin stem gets its colonies.
    cut = float(np.quantile(on_side, 0.5)) if on_side.size else 0.5
    _paint(p, _ramp(field, cut - 0.12, cut) * side, d.rgb((215, 200, 70)), 0.65)
    velvet = (0.75 + 0.5 * _blurred(rng.random((w, w)), 0.7))[..., None]
    _paint(p, _ramp(field, cut, cut + 0.1) * side, np.asarray(d.rgb((98, 90, 38))) * velvet, 0.92)


def _anthracnose(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Sunken dark circles: a pale rim, an offset shadow, a dark bowl with salmon spore dots."""
    w = p.width
    (cover, cd), (ink, ind) = _layer(w), _layer(w, "RGB")
    rim, shadow, bowl = (
        tuple(int(v) for v in d.rgb(c)) for c in ((170, 140, 90), (30, 22, 16), (88, 55, 35))
    )
    for x, y in _sites(p, _count(p, 4 * d.density), rng):
        rr = w * 0.055 * d.scale * rng.uniform(0.7, 1.3)
        _disc(cd, x, y, rr * 1.12)
        _disc(ind, x, y, rr * 1.12, rim)
        _disc(ind, x - 0.12 * rr, y - 0.12 * rr, rr, shadow)
        _disc(ind, x + 0.06 * rr, y + 0.06 * rr, rr * 0.88, bowl)
        ind.ellipse(
            (x - 0.55 * rr, y - 0.55 * rr, x + 0.55 * rr, y + 0.55 * rr),
            outline=shadow,
            width=_px(w / 150),
        )
        for dx, dy in rng.uniform(-0.4, 0.4, (6, 2)) * rr:
            _disc(ind, x + dx, y + dy, max(1.0, rr * 0.08), (220, 135, 95))
    _paint(p, _alpha(cover, 0.5), np.asarray(ink, np.float32), 0.95)


def _gray(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Grey oblong lesions with tan borders, boxed in by the veins they run between."""
    w = p.width
    (cover, cd), (ink, ind) = _layer(w), _layer(w, "RGB")
    border, core = (tuple(int(v) for v in d.rgb(c)) for c in ((96, 80, 55), (168, 166, 156)))
    for x, y in _sites(p, _count(p, 16 * d.density), rng):
        hl = w * 0.065 * d.scale * rng.uniform(0.7, 1.3)
        hw = w * 0.016 * d.scale * rng.uniform(0.8, 1.2)
        box = (x - hw, y - hl, x + hw, y + hl)
        cd.rectangle(box, fill=255)
        ind.rectangle(box, fill=border)
        rim = min(1.5, hw / 3)
        ind.rectangle((x - hw + rim, y - hl + rim, x + hw - rim, y + hl - rim), fill=core)
    _paint(p, _alpha(cover, 0.4), np.asarray(ink, np.float32), 0.95)


def _stipple(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Mite feeding: a bronze cast, dense pale pinpricks and a few strands of webbing."""
    w = p.width
    _paint(p, np.ones_like(p.mask), d.rgb((165, 145, 75)), 0.3)
    (dots, dd), (web, wd) = _layer(w), _layer(w)
    dd.point([tuple(xy) for xy in _sites(p, _count(p, 500 * d.density), rng).tolist()], fill=255)
    strands = _sites(p, 12, rng).tolist()
    for a, b in zip(strands[::2], strands[1::2], strict=True):
        wd.line([tuple(a), tuple(b)], fill=255, width=1)
    _paint(p, _alpha(dots), d.rgb((228, 222, 165)), 0.9)
    _paint(p, _alpha(web), (240, 240, 240), 0.5)


def _scab(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    crust, cd = _layer(w)
    for x, y in _sites(p, _count(p, 9 * d.density), rng):
        cd.polygon(_blob(x, y, w * 0.035 * d.scale, rng, n=11), fill=255)
    rough = (0.7 + 0.6 * rng.random((w, w), dtype=np.float32))[..., None]
    _paint(p, _alpha(crust, 0.8), np.asarray(d.rgb((72, 66, 40))) * rough, 0.95)


def _streak(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    w = p.width
    (band, bd), (line, ld) = _layer(w), _layer(w)
    thick = max(2, int(w * 0.014 * d.scale))
    for x, y in _sites(p, _count(p, 7 * d.density), rng):
        span = w * rng.uniform(0.08, 0.18)
        bd.line([(x, y - span), (x, y + span)], fill=255, width=thick)
        ld.line([(x, y - span * 0.8), (x, y + span * 0.8)], fill=255, width=_px(thick / 3))
    _paint(p, _alpha(band, 1.0), d.rgb((215, 205, 95)), 0.85)
    _paint(p, _alpha(line), d.rgb((120, 80, 40)), 0.9)


def _holes(p: _Part, d: _Disease, rng: np.random.Generator) -> None:
    """Shot-hole: lesions that dropped out, leaving brown-rimmed holes to the background."""
    w = p.width
    (rim, rd), (hole, hd) = _layer(w), _layer(w)
    for x, y in _sites(p, _count(p, 10 * d.density), rng):
        r = w * 0.02 * d.scale * rng.uniform(0.7, 1.3)
        _disc(rd, x, y, r * 1.6)
        hd.polygon(_blob(x, y, r, rng), fill=255)
    _paint(p, _alpha(rim, 0.8), d.rgb((125, 75, 40)), 0.9)
    p.mask = p.mask * (1 - _alpha(hole, 0.5))


_Painter = Callable[[_Part, _Disease, np.random.Generator], None]
_PAINTERS: dict[str, _Painter] = {
    "spots": _spots,
    "rings": _rings,
    "mosaic": _mosaic,
    "yellowing": _yellowing,
    "blight": _blight,
    "rust": _rust,
    "mildew": _mildew,
    "mold": _mold,
    "anthracnose": _anthracnose,
    "gray": _gray,
    "stipple": _stipple,
    "scab": _scab,
    "streak": _streak,
    "holes": _holes,
}
_KEYWORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    # First match wins, so the order settles names with two keywords: gray_leaf_spot is gray,
    # early_blight is rings, yellow_leaf_curl_virus is yellowing, spider_mites_two_spotted is
    # stipple.
    (("healthy",), "none"),
    (("gray", "grey"), "gray"),
    (("ring", "target", "early_blight"), "rings"),
    (("mosaic",), "mosaic"),
    (("yellow", "curl"), "yellowing"),
    (("virus",), "mosaic"),
    (("mildew", "powdery"), "mildew"),
    (("mold", "mould"), "mold"),
    (("anthracnose",), "anthracnose"),
    (("rust",), "rust"),
    (("mite",), "stipple"),
    (("scab",), "scab"),
    (("streak", "stripe"), "streak"),
    (("hole",), "holes"),
    (("blight",), "blight"),
    (("spot",), "spots"),
)


@functools.cache
def _disease(name: str) -> _Disease:
    """Keyword classes vary a little around their pattern; unmatched names get a pattern from
    the name's hash and vary a lot, so two unknown diseases rarely look alike."""
    rng = _name_rng("disease", name)
    # Substring match, so ``cercospora_leaf_spot_gray_leaf_spot`` still finds ``gray``.
    pattern = next((pat for keys, pat in _KEYWORDS if any(k in name for k in keys)), None)
    if pattern == "none":
        return _Disease("none")
    spread, tint = (0.3, 15.0) if pattern else (0.55, 45.0)
    pattern = pattern or str(rng.choice(sorted(_PAINTERS)))
    return _Disease(
        pattern,
        density=math.exp(rng.uniform(-spread, spread)),
        scale=math.exp(rng.uniform(-spread, spread) * 0.7),
        tint=tuple(float(v) for v in rng.uniform(-tint, tint, 3)),
    )


# --------------------------------------------------------------------------- shading & pose


def _shade(p: _Part, rng: np.random.Generator) -> None:
    """Give the flat part volume: darker rims, a light from the upper left, gloss, grain."""
    w = p.width
    relief = _blurred(p.mask, w * 0.03)
    o = _px(w * 0.02)
    emboss = np.roll(relief, (o, o), axis=(0, 1)) - np.roll(relief, (-o, -o), axis=(0, 1))
    p.rgb *= (0.78 + 0.22 * relief - 0.6 * emboss)[..., None]
    body = _blurred(p.mask, w * 0.06)
    g = _px(w * 0.05)
    sheen = body * np.clip(np.roll(body, (-g, -g), axis=(0, 1)) - body, 0, 1)
    p.rgb += (p.gloss * 900 * sheen**2)[..., None]
    p.rgb += rng.normal(0, 3.0, (w, w, 1)).astype(np.float32)


@dataclass(frozen=True)
class _Pose:
    """Where the part lies in the frame, so no two images of a class are shifted copies."""

    angle: float
    scale: float
    dx: float
    dy: float
    flip: bool

    @classmethod
    def draw(cls, kind: str, rng: np.random.Generator, w: int) -> _Pose:
        """Stems stand roughly upright; leaves and fruit lie at any angle."""
        angle = rng.uniform(-35, 35) if kind == "stem" else rng.uniform(0, 360)
        return cls(
            angle=float(angle),
            scale=float(rng.uniform(0.9, 1.12)),
            dx=float(rng.uniform(-0.08, 0.08) * w),
            dy=float(rng.uniform(-0.08, 0.08) * w),
            flip=bool(rng.random() < 0.5),
        )

    def inverse_affine(self, w: int) -> tuple[float, ...]:
        """PIL maps output to input pixels, so the pose is handed over inverted."""
        a = math.radians(self.angle)
        f = -1.0 if self.flip else 1.0
        m = np.array([[f * math.cos(a), f * math.sin(a)], [-math.sin(a), math.cos(a)]])
        m /= self.scale
        c = np.array([w / 2, w / 2])
        t = c - m @ (c + np.array([self.dx, self.dy]))
        return (m[0, 0], m[0, 1], t[0], m[1, 0], m[1, 1], t[1])


@dataclass(frozen=True)
class _Shadow:
    """Cast shadow, as fractions of the canvas: offset, blur, and how much light it takes."""

    offset: float
    blur: float
    depth: float


def _place(p: _Part, pose: _Pose, ground: Array, shadow: _Shadow) -> Array:
    """Lay the posed part on the ground; its own silhouette casts the domain's shadow."""
    w = p.width
    rgba = _to_image(np.dstack([p.rgb, p.mask * 255]))
    posed = rgba.transform(
        (w, w), Image.Transform.AFFINE, pose.inverse_affine(w), Image.Resampling.BILINEAR
    )
    arr = np.asarray(posed, np.float32)
    alpha = arr[..., 3:] / 255.0
    cast = Image.new("L", (w, w))
    off = int(shadow.offset * w)
    cast.paste(posed.getchannel("A"), (off, off))
    dark = _alpha(cast, shadow.blur * w)[..., None] * shadow.depth
    return ground * (1 - dark) * (1 - alpha) + arr[..., :3] * alpha


# --------------------------------------------------------------------------- domains


def _bench(rng: np.random.Generator, w: int) -> Array:
    """Lab bench or sample tray: neutral, evenly lit, finely grained."""
    tone = rng.uniform(0, 1)
    colour = (1 - tone) * np.array([142, 142, 138]) + tone * np.array([190, 178, 152])
    ground = np.empty((w, w, 3), np.float32)
    ground[:] = colour * rng.uniform(0.94, 1.06)
    ground *= (0.96 + 0.08 * _noise(rng, w, 8))[..., None]
    ground += rng.normal(0, 5, (w, w, 1)) + rng.normal(0, 2, (w, w, 3))
    return ground


def _field_ground(rng: np.random.Generator, w: int) -> Array:
    """Outdoor soil with pebbles and grass blades: clutter a lab-trained model never saw."""
    soil = np.asarray(_jitter((96, 74, 50), rng, 0.15), np.float32)
    ground = soil * (0.7 + 0.6 * _noise(rng, w, 10))[..., None]
    ground += rng.normal(0, 10, (w, w, 1))
    img = _to_image(ground)
    draw = ImageDraw.Draw(img)
    for x, y in rng.uniform(0, w, (15, 2)):
        grey = int(rng.uniform(90, 170))
        _disc(draw, x, y, rng.uniform(0.008, 0.025) * w, (grey, grey - 8, grey - 18))
    for x, y in rng.uniform(0, w, (70, 2)):
        a, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45) * w
        tip = (x + length * math.cos(a), y + length * math.sin(a))
        mid = (
            (x + tip[0]) / 2 + rng.normal(0, 0.05 * w),
            (y + tip[1]) / 2 + rng.normal(0, 0.05 * w),
        )
        colour = _pick(((70, 120, 40), (110, 150, 60), (170, 160, 95), (50, 90, 35)), rng)
        colour = tuple(int(v) for v in _jitter(colour, rng, 0.15))
        draw.line(_curve((x, y), mid, tip, 8), fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(img, np.float32)


def _sun_dapple(img: Array, rng: np.random.Generator) -> Array:
    """Canopy light: hard-edged patches of warm sun and deep shade across the whole scene."""
    light = 0.55 + 0.7 * _ramp(_noise(rng, img.shape[0], 4), 0.4, 0.6)
    return img * light[..., None] * np.array([1.06, 1.0, 0.9], np.float32)


def _low_light(img: Array, rng: np.random.Generator) -> Array:
    """Dusk or a dim greenhouse: little signal, flat contrast, sensor noise over fine lesions."""
    h = img.shape[0]
    dim = img * rng.uniform(0.22, 0.34) + 6
    return dim + rng.normal(0, 7, (h, h, 1)) + rng.normal(0, 4, (h, h, 3))


def _overexposed(img: Array, rng: np.random.Generator) -> Array:
    """Blown highlights: a compressive tone curve plus washed-out colour."""
    bright = 255 * (1 - (1 - img / 255) ** rng.uniform(1.9, 2.6))
    grey = bright.mean(axis=2, keepdims=True)
    return grey + 0.7 * (bright - grey)


def _colour_temperature(gains: RGB) -> Callable[[Array, np.random.Generator], Array]:
    """Uncorrected white balance under tungsten (warm) or shade and overcast sky (cool)."""

    def shift(img: Array, rng: np.random.Generator) -> Array:
        return img * np.asarray(gains, np.float32) * rng.uniform(0.97, 1.03, 3)

    return shift


def _defocus(img: Array, rng: np.random.Generator) -> Array:
    """A phone camera focused past the leaf: lesion edges and venation wash out."""
    radius = img.shape[0] * rng.uniform(0.02, 0.032)
    return np.asarray(_to_image(img).filter(ImageFilter.GaussianBlur(radius)), np.float32)


def _jpeg(img: Array, rng: np.random.Generator) -> Array:
    """Messaging-app recompression: 8x8 blocks and ringing, baked in before the final save."""
    buf = io.BytesIO()
    _to_image(img).save(buf, format="JPEG", quality=int(rng.integers(8, 16)))
    return np.asarray(Image.open(buf).convert("RGB"), np.float32)


@dataclass(frozen=True)
class _Domain:
    """An imaging condition: what lies under the plant, its shadow, and what the camera does
    to the finished output-size image."""

    ground: Callable[[np.random.Generator, int], Array]
    shadow: _Shadow
    finish: Callable[[Array, np.random.Generator], Array] | None = None


_SOFT = _Shadow(offset=0.025, blur=0.035, depth=0.28)
_DOMAINS: dict[str, _Domain] = {
    BASE_DOMAIN: _Domain(_bench, _SOFT),
    "field": _Domain(_field_ground, _Shadow(offset=0.07, blur=0.008, depth=0.6), _sun_dapple),
    "low_light": _Domain(_bench, _SOFT, _low_light),
    "overexposed": _Domain(_bench, _SOFT, _overexposed),
    "warm_light": _Domain(_bench, _SOFT, _colour_temperature((1.18, 1.0, 0.72))),
    "cool_light": _Domain(_bench, _SOFT, _colour_temperature((0.78, 0.96, 1.22))),
    "blur": _Domain(_bench, _SOFT, _defocus),
    "jpeg": _Domain(_bench, _SOFT, _jpeg),
}
KNOWN_DOMAINS: tuple[str, ...] = tuple(sorted(_DOMAINS))


def _domain(name: str, crop: str) -> _Domain:
    if name not in _DOMAINS:
        raise SynthError(
            f"crop '{crop}' asks for domain '{name}', which the synthesizer cannot render; "
            f"known domains: {', '.join(KNOWN_DOMAINS)}"
        )
    return _DOMAINS[name]


# --------------------------------------------------------------------------- public API


def render_image(
    crop: str, part: str, disease: str, domain: str, rng: np.random.Generator, size: int
) -> Image.Image:
    """Draw one `size`-square RGB image; all randomness comes from `rng`.

    The disease draws from a stream of its own, so one seed rendered as two classes gives the
    same part, pose and scene, differing only by the lesions (and one seed under two domains
    differs only by the domain): paired images for tests and for inspecting what a model saw.
    """
    dom = _domain(domain, crop)
    if size < 16:
        raise SynthError(f"image size {size} is too small to draw a plant; use 16 or more")
    w = size * _SUPERSAMPLE
    lesion_rng = np.random.default_rng(rng.integers(1 << 63))
    part_img = _draw_part(crop, part, rng, w)
    illness = _disease(disease)
    if illness.pattern != "none":
        _PAINTERS[illness.pattern](part_img, illness, lesion_rng)
    _shade(part_img, rng)
    pose = _Pose.draw(_part_kind(part), rng, w)
    scene = _place(part_img, pose, dom.ground(rng, w), dom.shadow)
    img = _to_image(scene).reduce(_SUPERSAMPLE)
    if dom.finish is not None:
        img = _to_image(dom.finish(np.asarray(img, np.float32), rng))
    return img


@dataclass(frozen=True)
class _Job:
    """One file to draw; its fields are its labels, its path and its RNG seed."""

    crop: str
    part: str
    disease: str
    domain: str
    index: int

    def rel_path(self) -> Path:
        name = f"{self.crop}-{self.part}-{self.disease}-{self.domain}-{self.index:05d}.jpg"
        return Path(self.domain, self.crop, self.part, self.disease, name)


def _jobs(config: PlatformConfig, settings: SynthSettings) -> Iterator[_Job]:
    """Every image to draw; parts take turns so each class covers each part evenly."""
    for crop in config.crops:
        for domain in (BASE_DOMAIN, *crop.phase3_domains):
            n = (
                settings.images_per_class
                if domain == BASE_DOMAIN
                else settings.images_per_domain_class
            )
            for disease in crop.all_classes:
                for i in range(n):
                    yield _Job(crop.name, crop.parts[i % len(crop.parts)], disease, domain, i)


def synthesize(
    config: PlatformConfig,
    out: Path,
    *,
    settings: SynthSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Write the dataset under `out` as ``<domain>/<crop>/<part>/<class>/*.jpg``.

    Every domain is checked before the first file is written, so a typo in a spec never
    leaves a half-drawn dataset behind. Files are replaced atomically; re-running with the
    same settings rewrites identical bytes. Into a folder an earlier synth run made (it holds
    the layout marker), images that this run does not draw are removed, so a smaller config
    never leaves stale classes behind for ingest to pick up; other folders are never pruned.
    """
    settings = config.data.synth if settings is None else settings
    for crop in config.crops:
        for domain in crop.phase3_domains:
            _domain(domain, crop.name)
    out = Path(out)
    earlier_synth = (out / LAYOUT_MARKER).is_file()
    jobs = list(_jobs(config, settings))
    size = settings.image_size
    for done, job in enumerate(jobs, 1):
        rng = image_rng(settings.seed, job.crop, job.part, job.disease, job.domain, job.index)
        img = render_image(job.crop, job.part, job.disease, job.domain, rng, size)
        atomic_write(
            out / job.rel_path(),
            lambda tmp, img=img: img.save(tmp, format="JPEG", quality=JPEG_QUALITY),
        )
        if progress is not None:
            progress(done, len(jobs))
    if earlier_synth:
        _remove_stale(out, {job.rel_path() for job in jobs})
    # Ingest cannot infer domain folders from depth alone, so it reads them from this marker.
    # Written last, so a folder holding it was drawn to the end.
    marker = {"layout": "crop-part-class", "domain_dirs": True, "synth": settings.model_dump()}
    atomic_write_text(out / LAYOUT_MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return SynthReport(
        root=out,
        images=len(jobs),
        per_domain=dict(Counter(j.domain for j in jobs)),
        per_crop=dict(Counter(j.crop for j in jobs)),
    )


def _remove_stale(out: Path, keep: set[Path]) -> None:
    """Delete images of an earlier synth run that this run did not draw, then empty folders."""
    for path in out.rglob("*.jpg"):
        if path.relative_to(out) not in keep:
            path.unlink()
    for folder in sorted((d for d in out.rglob("*") if d.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
