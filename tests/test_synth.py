"""Synthetic plant images: reproducible, laid out for ingest, and carrying real signal.

The demo and most end-to-end tests train on this data, so besides its layout these tests pin
down that it is worth learning from: diseases change the plant and nothing else, classes of a
crop are told apart by simple statistics, and every domain moves the statistic it is named for.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from aads.config import PlatformConfig, SynthSettings, load_config, parse_config
from aads.data.layout import discover
from aads.data.synth import (
    KNOWN_DOMAINS,
    SynthError,
    image_rng,
    render_image,
    synthesize,
)

DEMO = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"


def small_config(*, seed: int = 0, domains: list[str] | None = None) -> PlatformConfig:
    """Two crops, one of them unknown to the renderer, with 32-pixel images."""
    return parse_config(
        {
            "crops": [
                {
                    "name": "tomato",
                    "parts": ["leaf", "fruit"],
                    "phase1_classes": ["healthy", "early_blight"],
                    "phase2_batches": [["leaf_mold"]],
                    "phase3_domains": ["low_light"] if domains is None else domains,
                    "ood_holdout": ["mosaic_virus"],
                },
                {
                    "name": "okra",
                    "parts": ["leaf", "pod", "stalk"],
                    "phase1_classes": ["healthy", "vein_clearing"],
                },
            ],
            "router": {"source": "random:tiny"},
            "adapter": {"backbone": {"source": "random:tiny"}},
            "data": {
                "synth": {
                    "images_per_class": 4,
                    "images_per_domain_class": 2,
                    "image_size": 32,
                    "seed": seed,
                }
            },
        }
    )


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` as relative path -> sha256."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def jpegs(files: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in files.items() if k.endswith(".jpg")}


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32)


def draw(
    crop: str, part: str, disease: str, domain: str = "base", *, seed: int = 0, size: int = 48
) -> np.ndarray:
    """One image as float pixels; one seed gives the same part, pose and scene for any class."""
    return pixels(render_image(crop, part, disease, domain, np.random.default_rng(seed), size))


def off_bench(a: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose colour is far from the bench (the median of the image border)."""
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.abs(a - np.median(border, axis=0)).sum(-1) > threshold


def plant_region(a: np.ndarray) -> np.ndarray:
    """The plant and its shadow, grown by two pixels to cover anti-aliased edges."""
    grown = Image.fromarray(np.uint8(off_bench(a, 40)) * 255).filter(ImageFilter.MaxFilter(5))
    return np.asarray(grown) > 0


def plant_colours(a: np.ndarray) -> np.ndarray:
    """Colour histogram of the plant pixels only, so the background cannot decide."""
    levels = np.minimum(a // 52, 4).astype(int)
    bins = (levels[..., 0] * 25 + levels[..., 1] * 5 + levels[..., 2])[off_bench(a, 60)]
    return np.sqrt(np.bincount(bins, minlength=125) / max(1, bins.size))


# --------------------------------------------------------------------------- determinism


def test_same_seed_writes_byte_identical_files(tmp_path):
    synthesize(small_config(), tmp_path / "a")
    synthesize(small_config(), tmp_path / "b")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_different_seed_changes_every_image(tmp_path):
    a = jpegs(tree(synthesize(small_config(seed=0), tmp_path / "a").root))
    b = jpegs(tree(synthesize(small_config(seed=1), tmp_path / "b").root))
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_each_image_is_independent_of_generation_order(tmp_path):
    cfg = small_config()
    reordered = cfg.model_copy(update={"crops": list(reversed(cfg.crops))})
    synthesize(cfg, tmp_path / "a")
    synthesize(reordered, tmp_path / "b")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_rerun_into_same_folder_rewrites_identical_bytes_and_leaves_no_temp_files(tmp_path):
    first = tree(synthesize(small_config(), tmp_path).root)
    second = tree(synthesize(small_config(), tmp_path).root)
    assert first == second
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_render_image_with_the_same_rng_seed_is_pixel_identical():
    def once() -> Image.Image:
        rng = image_rng(3, "okra", "pod", "vein_clearing", "field", 7)
        return render_image("okra", "pod", "vein_clearing", "field", rng, 48)

    assert once().tobytes() == once().tobytes()


# --------------------------------------------------------------------------- layout


def test_layout_has_base_and_phase3_domains_with_parts_taking_turns(tmp_path):
    report = synthesize(small_config(), tmp_path)
    files = set(jpegs(tree(tmp_path)))

    assert {f for f in files if f.startswith("base/tomato/") and "/healthy/" in f} == {
        "base/tomato/leaf/healthy/tomato-leaf-healthy-base-00000.jpg",
        "base/tomato/fruit/healthy/tomato-fruit-healthy-base-00001.jpg",
        "base/tomato/leaf/healthy/tomato-leaf-healthy-base-00002.jpg",
        "base/tomato/fruit/healthy/tomato-fruit-healthy-base-00003.jpg",
    }
    assert {f for f in files if f.startswith("low_light/tomato/") and "/mosaic_virus/" in f} == {
        "low_light/tomato/leaf/mosaic_virus/tomato-leaf-mosaic_virus-low_light-00000.jpg",
        "low_light/tomato/fruit/mosaic_virus/tomato-fruit-mosaic_virus-low_light-00001.jpg",
    }
    okra_parts = {f.split("/")[2] for f in files if f.startswith("base/okra/")}
    assert okra_parts == {"leaf", "pod", "stalk"}
    # tomato: 4 classes x (4 base + 2 low_light); okra: 2 classes x 4 base, no phase-3 domains
    assert report.per_crop == {"tomato": 24, "okra": 8}
    assert report.per_domain == {"base": 24, "low_light": 8}
    assert report.images == len(files) == 32


def test_ingest_discovers_every_file_with_the_labels_it_was_drawn_with(tmp_path):
    synthesize(small_config(), tmp_path)
    labelled, misplaced, _, layout, domain_dirs = discover(tmp_path)
    assert (layout, domain_dirs, misplaced) == ("crop-part-class", True, [])
    for item in labelled:
        crop, part, label, domain, _ = Path(item.rel).name.split("-")
        assert (item.crop, item.part, item.label, item.domain) == (crop, part, label, domain)


def test_progress_counts_every_image_up_to_the_total(tmp_path):
    calls: list[tuple[int, int]] = []
    report = synthesize(small_config(), tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, report.images) for i in range(1, report.images + 1)]


def test_images_are_rgb_jpegs_of_the_configured_size(tmp_path):
    settings = SynthSettings(images_per_class=2, images_per_domain_class=1, image_size=40)
    synthesize(small_config(), tmp_path, settings=settings)
    for path in tmp_path.rglob("*.jpg"):
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (40, 40))


def test_unknown_domain_raises_before_writing_and_lists_known_domains(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SynthError) as err:
        synthesize(small_config(domains=["low_light", "fog"]), out)
    message = str(err.value)
    assert "'fog'" in message and "'tomato'" in message
    assert all(name in message for name in KNOWN_DOMAINS)
    assert not out.exists() or not any(out.rglob("*"))


# --------------------------------------------------------------------------- signal


@pytest.fixture(scope="module")
def demo() -> PlatformConfig:
    return load_config(DEMO)


@pytest.mark.slow
def test_a_disease_changes_the_plant_and_nothing_around_it(demo):
    for crop in demo.crops:
        for part, disease in itertools.product(crop.parts, crop.all_classes[1:]):
            for seed in range(2):
                healthy = draw(crop.name, part, "healthy", seed=seed)
                sick = draw(crop.name, part, disease, seed=seed)
                region = plant_region(healthy)
                changed = np.abs(healthy - sick).sum(-1) > 30
                where = f"{crop.name}/{part}/{disease} seed {seed}"
                assert (changed & region).sum() / region.sum() > 0.025, where
                assert (changed & ~region).mean() < 0.005, where


@pytest.mark.slow
def test_every_pair_of_demo_classes_is_told_apart_by_plant_colours_alone(demo):
    """Nearest centroid on colour histograms of the plant: 8 images to learn, 8 to test."""
    for crop in demo.crops:
        features = {
            disease: np.array(
                [
                    plant_colours(draw(crop.name, "leaf", disease, seed=i, size=64))
                    for i in range(16)
                ]
            )
            for disease in crop.all_classes
        }
        for a, b in itertools.combinations(crop.all_classes, 2):
            centroids = {c: features[c][:8].mean(axis=0) for c in (a, b)}
            hits = [
                min(centroids, key=lambda c: np.linalg.norm(x - centroids[c])) == truth
                for truth in (a, b)
                for x in features[truth][8:]
            ]
            assert np.mean(hits) >= 0.85, f"{crop.name}: {a} vs {b}"


def _laplacian(a: np.ndarray) -> float:
    g = a.mean(-1)
    return float(
        np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()
    )


def _blockiness(a: np.ndarray) -> float:
    """Mean step across 8-pixel JPEG block boundaries relative to the mean step anywhere."""
    steps = np.abs(np.diff(a.mean(-1), axis=1))
    return float(steps[:, 7::8].mean() / steps.mean())


def _border_texture(a: np.ndarray) -> float:
    return float(np.concatenate([a[:4], a[-4:]]).reshape(-1, 3).std(axis=0).mean())


SHIFTS = {
    # domain: (statistic, shifted / base must be below `below` or above `above`)
    "low_light": (lambda a: float(a.mean()), {"below": 0.5}),
    "overexposed": (lambda a: float(a.mean()), {"above": 1.3}),
    "warm_light": (lambda a: float(a[..., 0].mean() / a[..., 2].mean()), {"above": 1.3}),
    "cool_light": (lambda a: float(a[..., 2].mean() / a[..., 0].mean()), {"above": 1.3}),
    "blur": (_laplacian, {"below": 0.5}),
    "jpeg": (_blockiness, {"above": 1.5}),
    "field": (_border_texture, {"above": 2.0}),
}


def test_every_known_domain_is_covered_by_a_shift_check():
    assert set(SHIFTS) | {"base"} == set(KNOWN_DOMAINS)


@pytest.mark.parametrize("domain", sorted(SHIFTS))
def test_a_domain_moves_the_statistic_it_is_named_for(domain):
    statistic, bound = SHIFTS[domain]

    def mean_stat(dom: str) -> float:
        """Same seeds under both domains: identical scenes, only the imaging differs."""
        images = [draw("tomato", "leaf", "healthy", dom, seed=i, size=64) for i in range(6)]
        return float(np.mean([statistic(a) for a in images]))

    ratio = mean_stat(domain) / mean_stat("base")
    assert ratio < bound.get("below", np.inf) and ratio > bound.get("above", -np.inf), ratio


# One class name per pattern the renderer knows, plus one that matches no keyword.
PATTERN_NAMES = [
    "healthy", "leaf_spot", "target_spot", "mosaic", "leaf_curl", "late_blight", "rust",
    "powdery_mildew", "leaf_mold", "anthracnose", "gray_leaf_spot", "spider_mites", "scab",
    "streak", "shot_hole", "vein_clearing",
]  # fmt: skip


@pytest.mark.parametrize("size", [16, 33])
# okra (palmate leaf) and peach (lanceolate leaf, pod) reach the families no known crop uses.
@pytest.mark.parametrize("crop", ["tomato", "pepper", "corn", "okra", "peach"])
def test_every_pattern_renders_on_every_part_family_even_at_tiny_sizes(crop, size):
    for part, disease in itertools.product(["leaf", "fruit", "stem"], PATTERN_NAMES):
        img = render_image(crop, part, disease, "base", np.random.default_rng(0), size)
        assert (img.mode, img.size) == ("RGB", (size, size))


def test_unknown_crop_gets_its_own_look_from_its_name():
    okra = draw("okra", "leaf", "healthy")
    assert np.array_equal(okra, draw("okra", "leaf", "healthy"))
    assert np.abs(okra - draw("quinoa", "leaf", "healthy")).mean() > 5


def test_render_image_rejects_an_unknown_domain_naming_the_known_ones():
    with pytest.raises(SynthError, match="known domains: .*low_light"):
        render_image("tomato", "leaf", "healthy", "underwater", np.random.default_rng(0), 32)


def test_resynthesising_a_smaller_config_removes_the_stale_images(tmp_path):
    spec = {
        "crops": [{"name": "tomato", "phase1_classes": ["healthy", "early_blight", "leaf_mold"]}],
        "router": {"source": "random:tiny"},
        "adapter": {"backbone": {"source": "random:tiny"}},
    }
    settings = SynthSettings(images_per_class=2, images_per_domain_class=0, image_size=32)
    synthesize(parse_config(spec), tmp_path, settings=settings)
    spec["crops"][0]["phase1_classes"] = ["healthy", "early_blight"]
    synthesize(parse_config(spec), tmp_path, settings=settings)
    assert not (tmp_path / "base" / "tomato" / "leaf" / "leaf_mold").exists()
    assert len(list(tmp_path.rglob("*.jpg"))) == 4
