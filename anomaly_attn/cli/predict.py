"""Anomaly maps and scores for a folder of images with a trained checkpoint.

    python -m anomaly_attn.predict ckpt_path=RUN/checkpoints/model.ckpt input_dir=DIR [output_dir=OUT]
    python -m anomaly_attn.predict ... strict=true   # an image file that does not decode is an error

Images of any size, RGB or grayscale, are converted to the model's channels and resized to its image size
(as in training); each map is resized back to its image's original size. Writes to ``output_dir``:

- ``heatmaps/<relative path>.png``, mirroring ``input_dir``'s sub-folders (``crack/000.png`` ->
  ``heatmaps/crack/000.png``, ``sub/img.jpg`` -> ``heatmaps/sub/img.jpg.png``): the original image with
  the jet-coloured map over it, on one colour scale for all images (0 to twice the validation pixel
  threshold, as in the training run's figures);
- ``maps.npz``: one float32 array per image, at the image's original size, keyed by its path relative
  to ``input_dir`` (``np.load(...)["sub/img.png"]``), written one by one so memory stays bounded;
- ``scores.csv``: ``file, anomaly_score, predicted_label`` (``file``: the path relative to ``input_dir``;
  1 = anomalous: the score reaches the IMAGE threshold stored in the checkpoint, chosen on validation
  data of normal training images).

Which files are read: those with an image extension (``IMAGE_EXTENSIONS``), below ``input_dir``. Hidden
files and folders (``.DS_Store``, macOS ``._img.png`` copies, ``.ipynb_checkpoints``) are skipped
silently; other files (``notes.txt``, ``labels.csv``) are listed in one info line and skipped. An image
file that does not decode (corrupt, truncated, not an image) is skipped with one warning naming every
such file; with ``strict=true`` any such file is an error instead, before anything is written.
"""

from __future__ import annotations

import csv
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from anomaly_attn.cli.arguments import run_hydra_app
from anomaly_attn.cli.errors import debug_requested, exit_with_error
from anomaly_attn.common.atomic import atomic_path
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config
from anomaly_attn.data.errors import CorruptImageError
from anomaly_attn.data.layout import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from PIL import Image

    from anomaly_attn.maps.engine import MapEngine

log = logging.getLogger(__name__)

# How many file names one log line or error message lists before it gives the count of the rest.
NAMES_SHOWN = 20


def _files(paths: list[str]) -> str:
    """``2 files: a.png, b.png`` (at most ``NAMES_SHOWN`` names)."""
    shown = ", ".join(paths[:NAMES_SHOWN])
    rest = len(paths) - NAMES_SHOWN
    return f"{len(paths)} file{'s' * (len(paths) != 1)}: {shown}" + (f" and {rest} more" if rest > 0 else "")


def list_images(input_dir: str | Path) -> list[Path]:
    """Files with an image extension below ``input_dir`` (recursively, sorted; hidden files and folders
    left out); the other files are named in one info line. An error if there are no image files."""
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir {root} is not a directory.")
    images, others = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # .DS_Store, ._img.png (macOS metadata, not images), .ipynb_checkpoints/...
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
    if others:
        names = [p.relative_to(root).as_posix() for p in others]
        log.info("Skipped files that are not images (by extension), %s", _files(names))
    return images


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_npy(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Add one array to an open .npz (zip of .npy files) without holding the others in memory."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
        np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


def heatmap_path(relative: str) -> str:
    """``crack/000.png`` -> ``crack/000.png``, ``sub/img.jpg`` -> ``sub/img.jpg.png``: the input's
    relative path, as a PNG; the original extension stays so that ``a.jpg`` and ``a.png`` do not collide."""
    return relative if relative.lower().endswith(".png") else relative + ".png"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _score_batch(
    engine: MapEngine, originals: list, size: int, channels: int
) -> tuple[torch.Tensor, np.ndarray]:
    """The selected map (at the model's size) and image scores of decoded PIL images."""
    from PIL import Image

    pixels = np.stack(
        [np.asarray(img.resize((size, size), Image.Resampling.BILINEAR)) for img in originals]
    ).reshape(len(originals), size, size, channels)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).to(engine.device)
    maps, _ = engine.compute_maps(images)
    selected = maps["selected"].detach()
    return selected, engine.map_scores(maps)["selected"].cpu().numpy()


def _decode(paths: list[Path], mode: str) -> tuple[list[tuple[Path, Image.Image]], list[Path]]:
    """The images of ``paths`` that decode, with their paths, and the paths that do not."""
    from anomaly_attn.data.dataset import open_image

    decoded, unreadable = [], []
    for path in paths:
        try:
            decoded.append((path, open_image(path, mode)))
        except CorruptImageError:
            unreadable.append(path)
    return decoded, unreadable


def _unreadable_message(unreadable: list[Path], input_dir: Path) -> str:
    names = [p.relative_to(input_dir).as_posix() for p in unreadable]
    return f"image files that do not decode under {input_dir}, {_files(names)}"


def _load_engine(
    ckpt_path: str | Path, device: str, channels_last: bool
) -> tuple[MapEngine, float, float | None]:
    """The checkpoint's map engine, its image threshold and the heatmaps' colour-scale maximum."""
    from anomaly_attn.maps.engine import MapEngine

    engine = MapEngine.from_checkpoint(ckpt_path, map_location=resolve_device(device))
    engine.channels_last = bool(channels_last)
    image_threshold = float(engine.image_thresholds[0])
    pixel_threshold = float(engine.pixel_thresholds[0])
    if not np.isfinite(image_threshold):
        raise ValueError(
            f"{ckpt_path} has no validation thresholds (a Lightning best/last.ckpt saved before "
            "calibration). Use the run's checkpoints/model.ckpt, or write a calibrated one with "
            f"`python -m anomaly_attn.evaluate ckpt_path={ckpt_path}`."
        )
    vmax = 2.0 * pixel_threshold if np.isfinite(pixel_threshold) and pixel_threshold > 0 else None
    return engine, image_threshold, vmax


def _save_heatmap(target: Path, original: Image.Image, full_map: np.ndarray, vmax: float | None) -> None:
    from PIL import Image

    from anomaly_attn.reporting.figures import jet_overlay

    display = np.asarray(original.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    overlay = jet_overlay(display, full_map, vmin=None if vmax is None else 0.0, vmax=vmax)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(overlay, 0, 1) * 255).astype(np.uint8)).save(target)


def _predict_batch(
    engine: MapEngine, decoded: list[tuple[Path, Image.Image]], input_dir: Path, output_dir: Path,
    archive: zipfile.ZipFile, vmax: float | None,
) -> list[tuple[str, float]]:
    """Maps, heatmaps and scores of one batch of decoded images; returns (relative path, score) pairs."""
    originals = [image for _, image in decoded]
    attention, scores = _score_batch(engine, originals, engine.image_size, engine.in_channels)
    scored = []
    for (path, original), anomaly_map, score in zip(decoded, attention, scores, strict=True):
        width, height = original.size
        full_map = torch.nn.functional.interpolate(
            anomaly_map[None].float(), size=(height, width), mode="bilinear", align_corners=False
        )[0, 0].cpu().numpy().astype(np.float32)
        relative = path.relative_to(input_dir).as_posix()
        _write_npy(archive, relative, full_map)
        _save_heatmap(output_dir / "heatmaps" / heatmap_path(relative), original, full_map, vmax)
        scored.append((relative, float(score)))
    return scored


def predict_folder(
    ckpt_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    batch_size: int = 16,
    device: str = "auto",
    channels_last: bool = True,
    strict: bool = False,
) -> list[dict[str, Any]]:
    """Score every image under ``input_dir`` and write heatmaps, maps.npz and scores.csv to
    ``output_dir``. Returns the rows of scores.csv. Image files that do not decode are skipped with one
    warning naming them; ``strict`` raises ``CorruptImageError`` naming them instead, before anything is
    written. Needs no Lightning: the checkpoint's map engine computes the maps."""
    engine, image_threshold, vmax = _load_engine(ckpt_path, device, channels_last)
    mode = "RGB" if engine.in_channels == 3 else "L"
    input_dir, output_dir = Path(input_dir).expanduser(), Path(output_dir)
    files = list_images(input_dir)
    if strict:
        # A first decoding pass, one image at a time (the cost of strict): the error names every bad
        # file, and no output is left half-written.
        unreadable = [path for path in files if _decode([path], mode)[1]]
        if unreadable:
            raise CorruptImageError(_unreadable_message(unreadable, input_dir) + " (strict=true)")
    scored: list[tuple[str, float]] = []
    unreadable = []
    # maps.npz is renamed into place only when the loop succeeds (atomic_path removes a partial file).
    with atomic_path(output_dir / "maps.npz") as maps_tmp:
        with zipfile.ZipFile(maps_tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for batch_files in _batches(files, max(int(batch_size), 1)):
                decoded, bad = _decode(batch_files, mode)
                unreadable += bad
                if decoded:
                    scored += _predict_batch(engine, decoded, input_dir, output_dir, archive, vmax)
        if not scored:
            raise CorruptImageError(_unreadable_message(unreadable, input_dir) + "; no image left to predict")
    if unreadable:
        message = _unreadable_message(unreadable, input_dir)
        log.warning("Skipped %s (strict=true makes this an error).", message)
    rows = [
        {"file": relative, "anomaly_score": score, "predicted_label": int(score >= image_threshold)}
        for relative, score in scored
    ]
    with atomic_path(output_dir / "scores.csv") as scores_tmp, scores_tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "anomaly_score", "predicted_label"])
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "%d images: %d predicted anomalous (image threshold %.4g from validation data). Wrote %s",
        len(rows), sum(r["predicted_label"] for r in rows), image_threshold, output_dir,
    )
    return rows


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def predict(cfg: DictConfig) -> None:
    check_config(cfg, HydraConfig.get())
    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    try:
        predict_folder(
            cfg.ckpt_path, cfg.input_dir, output_dir, int(cfg.batch_size), str(cfg.device),
            channels_last=bool(cfg.get("channels_last", True)), strict=bool(cfg.get("strict", False)),
        )
    # What the user passed is wrong (no such folder or checkpoint, an uncalibrated checkpoint, undecodable
    # images with strict=true): the message says what to fix, a traceback would only bury it.
    except (FileNotFoundError, ValueError) as error:
        if debug_requested():
            raise
        exit_with_error(error)


def main() -> None:
    run_hydra_app(predict, config_name="predict")


if __name__ == "__main__":
    main()
