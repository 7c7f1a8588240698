"""Anomaly maps and scores for a folder of images with a trained checkpoint.

    python -m anomaly_attn.predict ckpt_path=RUN/checkpoints/model.ckpt input_dir=DIR [output_dir=OUT]

Images of any size, RGB or grayscale, are converted to the model's channels and resized to its image size
(as in training); each map is resized back to its image's original size. Writes to ``output_dir``:

- ``heatmaps/<name>.png`` (``sub/img.jpg`` -> ``sub__img.jpg.png``): the original image with the
  jet-coloured map over it, on one colour scale for all images (0 to twice the validation pixel
  threshold, as in the training run's figures);
- ``maps.npz``: one float32 array per image, at the image's original size, keyed by its path relative
  to ``input_dir`` (``np.load(...)["sub/img.png"]``), written one by one so memory stays bounded;
- ``scores.csv``: ``file, anomaly_score, predicted_label`` (1 = anomalous: the score reaches the IMAGE
  threshold stored in the checkpoint, chosen on validation data of normal training images).
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
from anomaly_attn.common.atomic import atomic_path
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config
from anomaly_attn.data.layout import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from anomaly_attn.maps.engine import MapEngine

log = logging.getLogger(__name__)


def list_images(input_dir: str | Path) -> list[Path]:
    """Image files below ``input_dir`` (recursively, sorted); an error if there are none."""
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir {root} is not a directory.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
    return files


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_npy(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Add one array to an open .npz (zip of .npy files) without holding the others in memory."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
        np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


def heatmap_file_name(relative: str) -> str:
    """``sub/img.jpg`` -> ``sub__img.jpg.png`` (unique per input file, all in one folder)."""
    flat = relative.replace("/", "__")
    return flat if flat.lower().endswith(".png") else flat + ".png"


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


def predict_folder(
    ckpt_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    batch_size: int = 16,
    device: str = "auto",
    channels_last: bool = True,
) -> list[dict[str, Any]]:
    """Score every image under ``input_dir`` and write heatmaps, maps.npz and scores.csv to
    ``output_dir``. Returns the rows of scores.csv. An undecodable image raises an error naming it.
    Needs no Lightning: the checkpoint's map engine computes the maps."""
    from PIL import Image

    from anomaly_attn.data.dataset import open_image
    from anomaly_attn.maps.engine import MapEngine
    from anomaly_attn.reporting.figures import jet_overlay

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
    size, channels = engine.image_size, engine.in_channels
    input_dir, output_dir = Path(input_dir).expanduser(), Path(output_dir)
    files = list_images(input_dir)
    heatmap_dir = output_dir / "heatmaps"
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # An unreadable image leaves no torn maps.npz behind (atomic_path removes the partial file).
    with atomic_path(output_dir / "maps.npz") as maps_tmp:
        with zipfile.ZipFile(maps_tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for batch_files in _batches(files, max(int(batch_size), 1)):
                originals = [open_image(path, "RGB" if channels == 3 else "L") for path in batch_files]
                attention, scores = _score_batch(engine, originals, size, channels)
                batch = zip(batch_files, originals, attention, scores, strict=True)
                for path, original, anomaly_map, score in batch:
                    width, height = original.size
                    full_map = torch.nn.functional.interpolate(
                        anomaly_map[None].float(), size=(height, width), mode="bilinear", align_corners=False
                    )[0, 0].cpu().numpy()
                    relative = path.relative_to(input_dir).as_posix()
                    _write_npy(archive, relative, full_map.astype(np.float32))
                    display = np.asarray(original.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
                    overlay = jet_overlay(display, full_map, vmin=None if vmax is None else 0.0, vmax=vmax)
                    Image.fromarray((np.clip(overlay, 0, 1) * 255).astype(np.uint8)).save(
                        heatmap_dir / heatmap_file_name(relative)
                    )
                    rows.append(
                        {
                            "file": relative,
                            "anomaly_score": float(score),
                            "predicted_label": int(score >= image_threshold),
                        }
                    )
    with atomic_path(output_dir / "scores.csv") as scores_tmp, scores_tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "anomaly_score", "predicted_label"])
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "%d images: %d predicted anomalous (image threshold %.4g from validation data). Wrote %s",
        len(rows),
        sum(r["predicted_label"] for r in rows),
        image_threshold,
        output_dir,
    )
    return rows


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def predict(cfg: DictConfig) -> None:
    check_config(cfg, HydraConfig.get())
    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    predict_folder(
        cfg.ckpt_path, cfg.input_dir, output_dir, int(cfg.batch_size), str(cfg.device),
        channels_last=bool(cfg.get("channels_last", True)),
    )


def main() -> None:
    run_hydra_app(predict, config_name="predict")


if __name__ == "__main__":
    main()
