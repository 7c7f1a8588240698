"""Every image is read as it is: 8- and 16-bit gray, 32-bit integer and float gray, palette, alpha, 1-bit,
16-bit colour, EXIF orientation; anything else is an error naming the file and its mode."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anomaly_attn.data.cache_key as cache_key
from anomaly_attn.data.cache_key import entry_name, make_key
from anomaly_attn.data.dataset import AnomalyImageDataset, ImageCache, open_image
from anomaly_attn.data.disk_cache import STATS, DecodedImageStore
from anomaly_attn.data.errors import CorruptImageError
from anomaly_attn.data.folder import Folder
from anomaly_attn.data.layout import Record
from anomaly_attn.training.datamodule import AnomalyDataModule

RAMP = np.arange(65536, dtype=np.uint16).reshape(256, 256)
"""Every 16-bit value once."""
RAMP_8 = np.round(RAMP / 257).astype(np.uint8)
"""The ramp's 8-bit version: ``v·257`` is the 16-bit ``v``."""
WHITE_OF_RAMP = (65535 - 65407 + 1) / 65536
"""Values from 254.5·257 up round to 255: 129 of 65536 (0.2 %); clipping at 255 made 99.6 % white."""
OLD_DECODER_VERSION = "rgb|l, bilinear image, mask > threshold then nearest, v1"
"""The key's decoder before 16-bit gray was scaled (its entries hold 16-bit images clipped at 255)."""


def _save(pixels: np.ndarray, path: Path, mode: str | None = None) -> Path:
    """``pixels`` written with PIL, in ``mode`` when given (``frombytes``: PIL's fromarray has no I;16B)."""
    if mode is None:
        image = Image.fromarray(pixels)
    else:
        height, width = pixels.shape
        dtype = {"I;16B": ">u2", "I;16L": "<u2", "I;16": "<u2"}[mode]
        image = Image.frombytes(mode, (width, height), pixels.astype(dtype).tobytes())
    image.save(path)
    return path


def _write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of ``H×W×C`` values (C: 2 gray+alpha, 3 RGB, 4 RGBA), which PIL cannot write: IHDR,
    one IDAT of unfiltered big-endian rows, IEND."""
    height, width, channels = pixels.shape
    color_type = {2: 4, 3: 2, 4: 6}[channels]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = pixels.astype(">u2").reshape(height, width * channels)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def _read(path: Path, mode: str) -> np.ndarray:
    return np.asarray(open_image(path, mode))


def _gray(path: Path) -> np.ndarray:
    return _read(path, "L")


# ---- 16-bit gray ---------------------------------------------------------------------------------------
def test_a_16_bit_ramp_decodes_like_its_8_bit_version(tmp_path: Path) -> None:
    path = _save(RAMP, tmp_path / "ramp16.png")
    assert Image.open(path).mode == "I;16"
    gray = _gray(path)
    assert gray.dtype == np.uint8 and gray.shape == (256, 256)
    np.testing.assert_array_equal(gray, RAMP_8)
    np.testing.assert_array_equal(gray, _gray(_save(RAMP_8, tmp_path / "ramp8.png")))
    assert np.abs(gray.astype(int) - (RAMP >> 8)).max() == 1  # the truncated 8-bit version, within 1/255
    assert (gray == 255).mean() == pytest.approx(WHITE_OF_RAMP) == pytest.approx(0.00197, abs=1e-5)
    assert (gray == 0).mean() == pytest.approx(129 / 65536)
    assert gray.mean() == pytest.approx(127.5, abs=0.01)
    rgb = _read(path, "RGB")
    assert rgb.shape == (256, 256, 3) and all((rgb[..., c] == gray).all() for c in range(3))


def test_a_16_bit_image_equals_the_8_bit_one_it_was_scaled_from(tmp_path: Path) -> None:
    pixels_8 = np.random.default_rng(0).integers(0, 256, (32, 48), dtype=np.uint8)
    path_16 = _save(pixels_8.astype(np.uint16) * 257, tmp_path / "a16.png")
    path_8 = _save(pixels_8, tmp_path / "a8.png")
    for mode in ("L", "RGB"):
        np.testing.assert_array_equal(_read(path_16, mode), _read(path_8, mode))


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I;16B", ".tif"), ("I;16L", ".tif")])
def test_16_bit_png_and_tiff_of_either_byte_order_are_scaled(tmp_path: Path, mode: str, suffix: str) -> None:
    path = _save(RAMP, tmp_path / f"ramp{suffix}", mode)
    read_as = Image.open(path).mode
    assert read_as == ("I;16B" if mode == "I;16B" else "I;16")  # PIL reads little-endian TIFF as I;16
    np.testing.assert_array_equal(_gray(path), RAMP_8)


# ---- 32-bit integer and float gray ---------------------------------------------------------------------
def test_32_bit_integer_gray_within_16_bits_is_scaled(tmp_path: Path) -> None:
    path = _save(RAMP.astype(np.int32), tmp_path / "ramp32.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(_gray(path), RAMP_8)


@pytest.mark.parametrize(("low", "high"), [(-5, 1000), (0, 70000)])
def test_32_bit_integer_gray_outside_16_bits_is_an_error(tmp_path: Path, low: int, high: int) -> None:
    pixels = np.linspace(low, high, 64).astype(np.int32).reshape(8, 8)
    path = _save(pixels, tmp_path / "wide.tif")
    with pytest.raises(CorruptImageError) as caught:
        open_image(path, "L")
    message = str(caught.value)
    assert str(path) in message and "mode 'I'" in message
    assert f"[{low}, {high}]" in message and "[0, 65535]" in message and "supported:" in message


def test_float_gray_within_0_1_is_read_as_is(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 256 * 4, dtype=np.float32).reshape(32, 32)
    path = _save(values, tmp_path / "depth.tif")
    assert Image.open(path).mode == "F"
    gray = _gray(path)
    np.testing.assert_array_equal(gray, np.round(values.astype(np.float64) * 255).astype(np.uint8))
    assert gray[0, 0] == 0 and gray[-1, -1] == 255 and gray.mean() == pytest.approx(127.5, abs=0.1)


@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan")])
def test_float_gray_outside_0_1_is_an_error(tmp_path: Path, bad: float) -> None:
    values = np.full((4, 4), 0.5, dtype=np.float32)
    values[1, 2] = bad
    path = _save(values, tmp_path / "depth.tif")
    with pytest.raises(CorruptImageError) as caught:
        open_image(path, "RGB")
    message = str(caught.value)
    assert str(path) in message and "mode 'F'" in message and "[0.0, 1.0]" in message
    assert ("NaN" in message) if np.isnan(bad) else (str(bad) in message)


# ---- palette, alpha, 1-bit, 16-bit colour ------------------------------------------------------------
def _palette_image(mode: str) -> Image.Image:
    image = Image.new(mode, (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([(0, 255), (1, 128), (2, 0)] if mode == "PA" else [0, 1, 2])
    return image


@pytest.mark.parametrize(
    ("mode", "name", "options"),
    [("P", "palette.png", {}), ("P", "transparent.png", {"transparency": 0}), ("PA", "palette.tif", {})],
)
def test_palette_images_are_looked_up(tmp_path: Path, mode: str, name: str, options: dict) -> None:
    """Transparency (a transparent index, or PA's alpha) is dropped like any alpha: the palette colour."""
    path = tmp_path / name
    _palette_image(mode).save(path, **options)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(_read(path, "RGB"), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    assert _gray(path).tolist() == [[76, 150, 29]]  # ITU-R 601-2 luma of red, green, blue


def test_alpha_is_dropped_keeping_the_stored_colour(tmp_path: Path) -> None:
    """Not composited on black or white: a transparent pixel reads as the colour stored under it, as PIL's
    ``convert`` (and every 8-bit RGBA image read before) does."""
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    path = _save(rgba, tmp_path / "rgba.png")
    assert Image.open(path).mode == "RGBA"
    np.testing.assert_array_equal(_read(path, "RGB"), rgba[..., :3])
    assert _gray(path).tolist() == [[18, 124]]
    np.testing.assert_array_equal(_gray(path), np.asarray(Image.open(path).convert("L")))
    la = np.array([[[200, 0], [40, 255]]], dtype=np.uint8)
    path = _save(la, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    assert _gray(path).tolist() == [[200, 40]]
    np.testing.assert_array_equal(_read(path, "RGB"), [[[200] * 3, [40] * 3]])


def test_cmyk_is_converted_like_pil_does(tmp_path: Path) -> None:
    path = tmp_path / "print.tif"
    Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255])).save(path)
    assert Image.open(path).mode == "CMYK"
    np.testing.assert_array_equal(_read(path, "RGB"), [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]])
    assert _gray(path).tolist() == [[255, 179, 0]]


def test_1_bit_images_read_as_0_and_255(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    Image.fromarray(np.array([[True, False, True]])).save(path)
    assert Image.open(path).mode == "1"
    assert _gray(path).tolist() == [[255, 0, 255]]


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_and_alpha_match_their_8_bit_version(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(channels)
    pixels_8 = rng.integers(0, 256, (16, 24, channels), dtype=np.uint8)
    scaled = _write_png16(tmp_path / "scaled16.png", pixels_8.astype(np.uint16) * 257)
    path_8 = _save(pixels_8, tmp_path / "a8.png")
    assert Image.open(path_8).mode == {2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    assert Image.open(scaled).mode == {2: "RGBA", 3: "RGB", 4: "RGBA"}[channels]  # PIL: LA;16 as RGBA
    for mode in ("RGB", "L"):
        np.testing.assert_array_equal(_read(scaled, mode), _read(path_8, mode))
    values_16 = rng.integers(0, 65536, (16, 24, channels), dtype=np.uint16)
    path_16 = _write_png16(tmp_path / "any16.png", values_16)
    rounded_8 = _save(np.round(values_16 / 257).astype(np.uint8), tmp_path / "rounded8.png")
    for mode in ("RGB", "L"):
        difference = _read(path_16, mode).astype(int) - _read(rounded_8, mode)
        assert np.abs(difference).max() <= 1  # PIL keeps the high byte: within 1/255 of rounding


def test_8_bit_files_decode_bit_identically_to_pil_convert(tmp_path: Path) -> None:
    """The path every existing dataset takes is unchanged (same arrays as ``Image.convert``)."""
    rng = np.random.default_rng(1)
    paths = [
        _save(rng.integers(0, 256, (12, 10), dtype=np.uint8), tmp_path / "l.png"),
        _save(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), tmp_path / "rgb.png"),
        _save(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), tmp_path / "rgba.png"),
        _save(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), tmp_path / "rgb.jpg"),
    ]
    for path in paths:
        for mode in ("RGB", "L"):
            with Image.open(path) as image:
                expected = np.asarray(image.convert(mode))
            np.testing.assert_array_equal(_read(path, mode), expected)


# ---- EXIF orientation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("orientation", "shown"),
    [
        (1, lambda a: a),
        (2, np.fliplr),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, shown) -> None:
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exif = Image.Exif()
    exif[0x0112] = orientation
    for name, array in (("o8.png", pixels), ("o16.png", pixels.astype(np.uint16) * 257)):
        path = tmp_path / name
        Image.fromarray(array).save(path, exif=exif)
        np.testing.assert_array_equal(_gray(path), shown(pixels))


def test_exif_orientation_of_a_jpeg_turns_it_upright(tmp_path: Path) -> None:
    """Orientation 6 (the camera was turned clockwise): shown turned 90° clockwise, so the bright left half
    of the stored 40×64 image is the top half of the 64×40 one read."""
    pixels = np.zeros((40, 64, 3), dtype=np.uint8)
    pixels[:, :32] = 230
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "camera.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    gray = _gray(path).astype(float)
    assert gray.shape == (64, 40)
    assert gray[:28].mean() > 220 and gray[36:].mean() < 10


# ---- unsupported -------------------------------------------------------------------------------------
def test_an_unsupported_mode_is_an_error_naming_the_file_and_its_mode(tmp_path: Path) -> None:
    """CIELab TIFF: PIL cannot turn it into RGB or gray (its "RGB" would copy L*, a*, b* as R, G, B)."""
    path = tmp_path / "lab.tif"
    Image.new("LAB", (4, 4), (50, 128, 128)).save(path)
    assert Image.open(path).mode == "LAB"
    for mode in ("RGB", "L"):
        with pytest.raises(CorruptImageError) as caught:
            open_image(path, mode)
        message = str(caught.value)
        assert f"cannot decode image {path}" in message and "mode 'LAB' is not supported" in message
        assert "supported: 1-bit" in message and "I;16B" in message


# ---- through the dataset, the disk cache and masks -------------------------------------------------
def _ramp_record(tmp_path: Path, mask: np.ndarray | None = None) -> Record:
    image = _save(RAMP, tmp_path / "ramp.png")
    if mask is None:
        return Record(image, None, 0, "good")
    return Record(image, _save(mask, tmp_path / "ramp_mask.png"), 1, "defect")


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_image_reaches_the_model_scaled(tmp_path: Path, channels: int) -> None:
    record = _ramp_record(tmp_path)
    dataset = AnomalyImageDataset([record], ImageCache(256, channels))
    image = dataset[0]["image"]
    assert image.shape == (channels, 256, 256)
    for band in image:
        np.testing.assert_array_equal(np.round(band.numpy() * 255).astype(np.uint8), RAMP_8)
    assert (image == 1.0).float().mean().item() == pytest.approx(WHITE_OF_RAMP)
    assert image.mean().item() == pytest.approx(0.5, abs=1e-4)


def test_a_16_bit_mask_binarizes_at_the_threshold(tmp_path: Path) -> None:
    """0/65535 masks read as 0/255; the threshold (127 of 255) falls between 127·257 and 128·257."""
    mask = np.zeros((256, 256), dtype=np.uint16)
    mask[:64] = 65535
    mask[64:96] = 128 * 257
    mask[96:128] = 127 * 257
    record = _ramp_record(tmp_path, mask)
    served = ImageCache(256, 1).mask(record)
    assert served.dtype == np.uint8 and set(np.unique(served).tolist()) == {0, 1}
    assert served[:96].all() and not served[96:].any()
    assert served.sum() == 96 * 256


def test_the_datamodule_trains_and_tests_on_16_bit_files(tmp_path: Path) -> None:
    """A folder of 16-bit images and masks through the whole data path, with the disk cache on (decoded
    once, then served from the store with the same values)."""
    part = tmp_path / "data" / "part"
    rng = np.random.default_rng(2)
    images_8 = {}
    layout = {"train/good": ["0", "1", "2", "3"], "test/good": ["g"], "test/scratch": ["s"]}
    for folder, names in layout.items():
        (part / folder).mkdir(parents=True)
        for name in names:
            images_8[name] = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            _save(images_8[name].astype(np.uint16) * 257, part / folder / f"{name}.png")
    (part / "ground_truth" / "scratch").mkdir(parents=True)
    mask = np.zeros((16, 16), dtype=np.uint16)
    mask[4:8, 4:12] = 65535
    _save(mask, part / "ground_truth" / "scratch" / "s_mask.png")

    def served() -> tuple[dict[str, np.ndarray], int]:
        before = STATS["images_decoded"]
        folder = Folder(root=tmp_path / "data", image_size=16, channels=1, cache={"dir": str(tmp_path / "c")})
        datamodule = AnomalyDataModule(folder, "part")
        datamodule.setup()
        splits = (datamodule.train_set, datamodule.val_set, datamodule.test_set)
        samples = [sample for split in splits for sample in split]
        pixels = {Path(s["path"]).stem: np.round(s["image"][0].numpy() * 255) for s in samples}
        pixels["mask"] = next(s["mask"][0].numpy() for s in samples if s["label"] == 1)
        return pixels, STATS["images_decoded"] - before

    first, decoded = served()
    again, decoded_again = served()
    assert decoded == 6 and decoded_again == 0
    for name, expected in images_8.items():
        np.testing.assert_array_equal(first[name], expected)
        np.testing.assert_array_equal(again[name], expected)
    assert first["mask"].sum() == again["mask"].sum() == 32 and first["mask"][4:8, 4:12].all()


def test_the_cache_key_changes_with_the_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _ramp_record(tmp_path)
    origin = {"root": str(tmp_path), "category": "part", "split": "train"}
    key = make_key([record], origin, 256, 1)
    assert key["decoder"] == cache_key.DECODER_VERSION != OLD_DECODER_VERSION
    monkeypatch.setattr(cache_key, "DECODER_VERSION", OLD_DECODER_VERSION)
    old_key = make_key([record], origin, 256, 1)
    assert old_key["decoder"] == OLD_DECODER_VERSION and entry_name(old_key) != entry_name(key)


def test_an_entry_decoded_by_the_old_decoder_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clipped ramp cached under the old decoder version stays in the store but is never served."""
    record = _ramp_record(tmp_path)
    origin = {"root": str(tmp_path), "category": "part", "split": "train"}
    store = DecodedImageStore(tmp_path / "cache")
    with monkeypatch.context() as patch:
        patch.setattr(cache_key, "DECODER_VERSION", OLD_DECODER_VERSION)
        clipped = np.minimum(RAMP, 255).astype(np.uint8)[..., None]
        assert store.write(make_key([record], origin, 256, 1), images=[clipped], masks=[], skipped={})
    before = STATS["images_decoded"]
    cache = ImageCache(256, 1, store)
    cache.load([record], origin=origin)
    assert STATS["images_decoded"] - before == 1
    np.testing.assert_array_equal(cache.image(record)[..., 0], RAMP_8)
    assert len(store.entries()) == 2
