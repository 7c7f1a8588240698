"""Synthetic validation anomalies: generator contracts, textures, the 2N validation set, its figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from anomaly_attn.cli.sweeps import CONFIG_DIR
from anomaly_attn.data.synthetic import get_generator, list_generators, perlin_noise
from anomaly_attn.data.synthetic_sources import SOURCE_KINDS, TextureSources, load_skimage_textures
from anomaly_attn.data.synthetic_validation import build_synthetic_validation
from anomaly_attn.reporting.figures import save_samples_figure

BUILTIN = ("cutpaste", "perlin", "scratch", "shapes")
MIN_SIZES = {"perlin": 16, "cutpaste": 16, "shapes": 8, "scratch": 8}


def _textured(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """A non-uniform H×W×C image in [0.2, 0.8], so every generator has something to change."""
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=(size, size, channels)).astype(np.float32)


def _train_sources(size: int, channels: int) -> TextureSources:
    return TextureSources(np.stack([_textured(size, channels, seed) for seed in range(10, 14)]))


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


class ConstantTexture:
    """A texture source that always returns one gray level (to check perlin's blend by value)."""

    def __init__(self, level: float) -> None:
        self.level = level

    def draw(self, rng: np.random.Generator, height: int, width: int, channels: int, image=None):
        return np.full((height, width, channels), self.level, dtype=np.float32)


def test_registry_holds_the_builtin_generators_and_names_them_on_a_typo() -> None:
    assert set(BUILTIN) <= set(list_generators())
    with pytest.raises(
        ValueError,
        match=r"unknown synthetic anomaly generator 'perlinn'\. Did you mean 'perlin'\? "
        r"Valid: 'cutpaste', 'perlin', 'scratch', 'shapes'",
    ):
        get_generator("perlinn")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", BUILTIN)
def test_generator_changes_the_image_only_inside_a_non_empty_binary_mask(name: str, channels: int) -> None:
    image = _textured(32, channels)
    sources = _train_sources(32, channels)
    for seed in range(5):
        anomalous, mask = get_generator(name)(image, np.random.default_rng(seed), sources)
        assert anomalous.shape == image.shape and anomalous.dtype == np.float32
        assert mask.shape == (32, 32) and mask.dtype == bool
        assert mask.sum() >= 4
        assert 0.0 <= anomalous.min() and anomalous.max() <= 1.0
        assert np.array_equal(anomalous[~mask], image[~mask])
        assert np.abs(anomalous[mask] - image[mask]).mean() > 0.01


@pytest.mark.parametrize("name", BUILTIN)
def test_generators_work_on_non_square_images(name: str) -> None:
    image = np.random.default_rng(0).uniform(0.2, 0.8, size=(20, 40, 3)).astype(np.float32)
    anomalous, mask = get_generator(name)(image, np.random.default_rng(1), _train_sources(20, 3))
    assert anomalous.shape == (20, 40, 3) and mask.shape == (20, 40) and mask.sum() >= 4
    assert np.array_equal(anomalous[~mask], image[~mask])


def test_perlin_blends_the_texture_with_beta_at_most_beta_max() -> None:
    """Image 1, texture 0: the anomalous pixels are (1−β)·0 + β·1 = β, one value per image in [0, 0.8]."""
    image = np.ones((32, 32, 1), dtype=np.float32)
    betas = []
    for seed in range(20):
        anomalous, mask = get_generator("perlin")(image, np.random.default_rng(seed), ConstantTexture(0.0))
        assert np.ptp(anomalous[mask]) < 1e-6
        betas.append(float(anomalous[mask].flat[0]))
    assert 0.0 <= min(betas) and max(betas) <= 0.8
    assert max(betas) - min(betas) > 0.3  # β is drawn, not fixed
    opaque, mask = get_generator("perlin")(
        image, np.random.default_rng(0), ConstantTexture(0.25), beta_max=0.0
    )
    assert np.all(opaque[mask] == 0.25)


def test_perlin_noise_spans_about_minus_one_to_one_for_any_period() -> None:
    noise = perlin_noise((50, 37), (7.5, 12.0), np.random.default_rng(0))
    assert noise.shape == (50, 37)
    assert -1.0 <= noise.min() < -0.3 and 0.3 < noise.max() <= 1.0


def test_perlin_mask_reaches_the_minimum_area_or_raises() -> None:
    image = _textured(32, 1)
    for seed in range(10):
        _, mask = get_generator("perlin")(image, np.random.default_rng(seed), _train_sources(32, 1))
        assert mask.sum() >= max(4, 0.005 * 32 * 32)
    with pytest.raises(ValueError, match="perlin: no mask of .* lower options.perlin.threshold"):
        get_generator("perlin")(image, np.random.default_rng(0), _train_sources(32, 1), threshold=1.0)


def test_cutpaste_pastes_a_shifted_copy_of_the_same_image() -> None:
    """With no colour jitter the pasted pixels are the image itself at one non-zero offset."""
    image = _textured(24, 1)
    for seed in range(4):
        anomalous, mask = get_generator("cutpaste")(image, np.random.default_rng(seed), None, jitter=0.0)
        rows, cols = np.nonzero(mask)
        offsets = [
            (d_row, d_col)
            for d_row in range(-rows.min(), 24 - rows.max())
            for d_col in range(-cols.min(), 24 - cols.max())
            if np.allclose(anomalous[rows, cols], image[rows + d_row, cols + d_col], atol=1e-6)
        ]
        assert offsets and (0, 0) not in offsets


def test_cutpaste_patches_cover_2_to_15_percent_and_scars_are_thin() -> None:
    image = _textured(64, 3)
    patch_areas = [
        get_generator("cutpaste")(image, np.random.default_rng(seed), None, scar_probability=0.0)[1].mean()
        for seed in range(10)
    ]
    assert 0.015 <= min(patch_areas) and max(patch_areas) <= 0.16
    scar_pixels = [
        get_generator("cutpaste")(image, np.random.default_rng(seed), None, scar_probability=1.0)[1].sum()
        for seed in range(10)
    ]
    # width 2-16 px, length 10-25 px at 256 px -> 0.5-4 px by 2.5-6.25 px at 64 px (at least 1×4)
    assert 4 <= min(scar_pixels) and max(scar_pixels) <= 40


def test_cutpaste_that_cannot_change_the_image_raises_instead_of_an_invisible_anomaly() -> None:
    """A uniform image without colour jitter: every paste is invisible."""
    uniform = np.full((32, 32, 1), 0.5, np.float32)
    with pytest.raises(ValueError, match="cutpaste: none of .* changed .* use the perlin generator"):
        get_generator("cutpaste")(uniform, np.random.default_rng(0), None, jitter=0.0)


def test_shapes_paint_one_random_gray_level_not_only_white() -> None:
    image = _textured(28, 1)
    levels = []
    for seed in range(20):
        anomalous, mask = get_generator("shapes")(image, np.random.default_rng(seed), None)
        assert np.ptp(anomalous[mask]) == 0.0  # one level per shape
        assert 3 <= mask.sum() <= 10 * 10  # a 3-8 px shape dilated by 1 px
        levels.append(float(anomalous[mask].flat[0]))
    assert len(set(levels)) >= 5
    assert sum(level == 1.0 for level in levels) < 10


def test_shapes_scale_with_the_image_side() -> None:
    """3-8 px at 28 px, 12-32 px at 112 px (lines shorten by their angle; +2 px of dilation)."""

    def extents(size: int) -> list[int]:
        image = _textured(size, 1)
        masks = [get_generator("shapes")(image, np.random.default_rng(seed), None)[1] for seed in range(12)]
        return [max(np.ptp(np.nonzero(mask)[axis]) + 1 for axis in (0, 1)) for mask in masks]

    small, large = extents(28), extents(112)
    assert 3 <= min(small) and max(small) <= 8 + 2
    assert 12 * 0.7 <= min(large) and max(large) <= 32 + 2
    assert np.mean(large) > 3 * np.mean(small)


@pytest.mark.parametrize("name", BUILTIN)
def test_too_small_images_are_rejected_with_the_minimum(name: str) -> None:
    minimum = MIN_SIZES[name]
    get_generator(name)(_textured(minimum, 1), np.random.default_rng(0), _train_sources(minimum, 1))
    small = minimum - 1
    with pytest.raises(
        ValueError, match=rf"'{name}' needs .* at least {minimum}×{minimum} px, got {small}×{small}"
    ):
        get_generator(name)(_textured(small, 1), np.random.default_rng(0), _train_sources(small, 1))


def test_skimage_textures_load_offline_and_sources_match_the_image() -> None:
    textures = dict(load_skimage_textures())
    assert {"brick", "grass", "gravel", "camera"} <= set(textures)
    for image in textures.values():
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] in (1, 3)
        assert 0.0 <= image.min() and image.max() <= 1.0
    for channels in (1, 3):
        texture = TextureSources(kinds=["skimage"]).draw(np.random.default_rng(0), 20, 30, channels)
        assert texture.shape == (20, 30, channels) and 0.0 <= texture.min() and texture.max() <= 1.0


def test_training_image_textures_are_transformed_not_copied() -> None:
    train = np.stack([_textured(16, 1, seed) for seed in range(3)])
    sources = TextureSources(train, kinds=["train_images"])
    for seed in range(10):
        texture = sources.draw(np.random.default_rng(seed), 16, 16, 1)
        assert not any(np.allclose(texture, original, atol=1e-3) for original in train)
    assert TextureSources(train, kinds="skimage").kinds == ("skimage",)
    with pytest.raises(ValueError, match="unknown texture source.*imagenet.*" + ", ".join(SOURCE_KINDS)):
        TextureSources(train, kinds=["imagenet"])
    with pytest.raises(ValueError, match="no foreign texture.*add 'skimage'"):
        TextureSources(None, kinds=["train_images"]).draw(np.random.default_rng(0), 16, 16, 1)


def _validation_inputs(count: int = 6, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    val = _tensor([_textured(32, channels, seed) for seed in range(count)])
    train = _tensor([_textured(32, channels, seed) for seed in range(100, 104)])
    return val, train


def test_validation_set_is_n_clean_then_the_same_n_with_anomalies() -> None:
    val, train = _validation_inputs()
    synthetic = build_synthetic_validation(val, train, ["perlin", "cutpaste"], seed=0)
    assert synthetic.images.shape == (12, 3, 32, 32) and synthetic.images.dtype == torch.float32
    assert synthetic.masks.shape == (12, 1, 32, 32) and synthetic.masks.dtype == torch.float32
    assert synthetic.labels.tolist() == [0] * 6 + [1] * 6 and synthetic.labels.dtype == torch.int64
    assert synthetic.generators == ["none"] * 6 + ["perlin", "cutpaste"] * 3
    assert torch.equal(synthetic.images[:6], val)
    assert synthetic.masks[:6].sum() == 0
    assert set(synthetic.masks.unique().tolist()) == {0.0, 1.0}
    assert (synthetic.masks[6:].sum(dim=(1, 2, 3)) >= 4).all()
    outside = synthetic.masks[6:] == 0
    assert torch.equal(synthetic.images[6:] * outside, val * outside)


def test_validation_set_is_bitwise_deterministic_and_seed_sensitive() -> None:
    val, train = _validation_inputs()
    first, again, other = (
        build_synthetic_validation(val, train, ["perlin", "cutpaste", "shapes"], seed=seed)
        for seed in (1, 1, 2)
    )
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert torch.equal(first.labels, again.labels) and first.generators == again.generators
    assert not torch.equal(first.masks, other.masks)


def test_max_images_takes_a_seeded_subset_in_order() -> None:
    val, train = _validation_inputs(count=10, channels=1)
    subset = build_synthetic_validation(val, train, ["shapes"], seed=3, max_images=4)
    assert len(subset) == 8
    picked = [int(np.flatnonzero([torch.equal(image, v) for v in val])[0]) for image in subset.images[:4]]
    assert picked == sorted(picked) and len(set(picked)) == 4
    again = build_synthetic_validation(val, train, ["shapes"], seed=3, max_images=4)
    assert torch.equal(subset.images, again.images)


def test_too_few_validation_images_name_dataset_val_fraction() -> None:
    val, train = _validation_inputs(count=3)
    with pytest.raises(
        ValueError, match=r"has 3 images.*at least 4: raise dataset.val_fraction \(now given as 0.05\)"
    ):
        build_synthetic_validation(val, train, ["perlin"], seed=0, val_fraction=0.05)


def test_unknown_generators_and_options_list_the_valid_ones() -> None:
    val, train = _validation_inputs()
    with pytest.raises(
        ValueError,
        match="unknown synthetic anomaly generator 'draem'.*'cutpaste', 'perlin', 'scratch', 'shapes'",
    ):
        build_synthetic_validation(val, train, ["perlin", "draem"], seed=0)
    with pytest.raises(ValueError, match="unknown option.*beta for .*'perlin'.*sources, beta_max"):
        build_synthetic_validation(val, train, ["perlin"], seed=0, options={"perlin": {"beta": 0.5}})
    with pytest.raises(ValueError, match="got no generators"):
        build_synthetic_validation(val, train, [], seed=0)
    with pytest.raises(ValueError, match=r"val_images must lie in \[0, 1\]"):
        build_synthetic_validation(val * 2 - 1, train, ["perlin"], seed=0)


def test_options_reach_the_generator_and_sources_choose_the_textures() -> None:
    val, train = _validation_inputs(channels=1)
    options = {"perlin": {"sources": ["skimage"], "beta_max": 0.0}, "shapes": {}}
    synthetic = build_synthetic_validation(val, train, ["perlin"], seed=0, options=options)
    assert synthetic.generators[6:] == ["perlin"] * 6
    with pytest.raises(ValueError, match="no foreign texture"):
        build_synthetic_validation(
            val, train[:0], ["perlin"], seed=0, options={"perlin": {"sources": ["train_images"]}}
        )


def test_samples_figure_is_a_png(tmp_path: Path) -> None:
    val, train = _validation_inputs()
    synthetic = build_synthetic_validation(val, train, ["perlin", "cutpaste", "shapes"], seed=0)
    path = save_samples_figure(synthetic, tmp_path / "figures" / "synthetic.png", count=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < path.stat().st_size < 2_000_000
    with Image.open(path) as picture:
        assert picture.width > picture.height  # 4 columns of 3 rows
    assert [p.name for p in path.parent.iterdir()] == ["synthetic.png"]


@pytest.mark.parametrize(
    "config", sorted((CONFIG_DIR / "validation").glob("*.yaml")), ids=lambda path: path.stem
)
def test_every_validation_config_is_plain_data_that_builds(config: Path) -> None:
    cfg = OmegaConf.load(config)
    assert cfg.name == config.stem and "_target_" not in cfg
    assert set(cfg) == {"name", "generators", "max_images", "options", "figure_samples"}
    if not cfg.generators:
        return
    val, train = _validation_inputs(channels=1)
    synthetic = build_synthetic_validation(
        val, train, cfg.generators, seed=0, max_images=cfg.max_images, options=cfg.options
    )
    assert synthetic.generators[6:] == [cfg.generators[i % len(cfg.generators)] for i in range(6)]


def test_scratches_are_thin_long_visible_and_both_bright_and_dark() -> None:
    image = _textured(64, 1)
    polarities, widths = set(), []
    for seed in range(20):
        anomalous, mask = get_generator("scratch")(image, np.random.default_rng(seed), _train_sources(64, 1))
        rows, cols = np.nonzero(mask)
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        assert extent >= 0.3 * 64 * 0.7  # long: 30-80 % of the side (the bend shortens the extent)
        widths.append(mask.sum() / extent)  # pixels per unit of length: the line's width
        level = float(anomalous[mask].mean())
        polarities.add("bright" if level > 0.85 else "dark" if level < 0.15 else "gray")
        assert np.abs(anomalous[mask] - image[mask]).mean() >= 0.25
    assert max(widths) <= 3.5 and min(widths) <= 1.5  # 1-2 px wide, never scaled up with the image
    assert polarities == {"bright", "dark"}
    bright, mask = get_generator("scratch")(image, np.random.default_rng(0), _train_sources(64, 1),
                                            polarity="bright")
    assert bright[mask].min() >= 0.9
