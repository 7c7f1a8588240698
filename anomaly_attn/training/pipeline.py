"""One job, end to end: data → model → fit → calibrate on validation → test → run directory.

The Hydra entry points (train.py, evaluate.py) are thin wrappers around these functions, so tests and
notebooks can call them with a composed config.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_attn.common.atomic import atomic_path, write_json_atomic, write_text_atomic
from anomaly_attn.common.fingerprint import fingerprint, stale_reason
from anomaly_attn.common.progress import progress_enabled
from anomaly_attn.config.groups import group_entries
from anomaly_attn.config.safety import scrub_secrets
from anomaly_attn.data.build import build_dataset, resolve_category
from anomaly_attn.data.datamodule import AnomalyDataModule
from anomaly_attn.data.synthetic import SyntheticValidation, build_synthetic_validation
from anomaly_attn.training.callbacks import AnomalyMapVisualizer, TrainingThroughput
from anomaly_attn.training.callbacks.attention_schedule import attention_schedule_callbacks
from anomaly_attn.training.interruption import requeued_attempt
from anomaly_attn.training.loggers import close_wandb, instantiate_loggers, logger_nodes
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.speed import SpeedOptions, resolve_precision, speed_options
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.gradient import alpha_variants
from anomaly_attn.maps.health import alpha_health
from anomaly_attn.maps.selection import (
    SelectionResult,
    SelectionSettings,
    objective_value,
    score_specs_on,
    select_maps,
    spatial_layers,
    spearman,
)
from anomaly_attn.maps.specs import MapSpec
from anomaly_attn.models.registry import model_config
from anomaly_attn.reporting.figures import save_samples_figure

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> AnomalyModule:
    return AnomalyModule(
        model=model_config(cfg),
        loss_terms=OmegaConf.to_container(cfg.loss.terms, resolve=True),
        attention=OmegaConf.to_container(cfg.attention, resolve=True),
        layer=cfg.layer,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        evaluation=OmegaConf.to_container(cfg.evaluation, resolve=True),
        center_input=bool(cfg.center_input),
        threshold_quantile=float(cfg.selection.threshold_quantile),
    )


def set_threads(cfg: DictConfig) -> None:
    """Apply ``threads`` (torch intra-op threads) when configured."""
    threads = cfg.get("threads")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads={threads} must be a positive integer (or null for torch's default).")
        torch.set_num_threads(int(threads))


def run_name(cfg: DictConfig, category: str, layer: str) -> str:
    parts = (cfg.dataset.name, category, cfg.model.name, layer, cfg.loss.name, cfg.attention.variant)
    return "-".join(map(str, parts)) + f"-s{cfg.seed}"


def build_callbacks(cfg: DictConfig, ckpt_dir: Path) -> list[pl.Callback]:
    """The ``callbacks`` group's callbacks (conf/callbacks/), instantiated like lightning-hydra-template's:
    every non-null entry by its ``_target_``; a ``dirpath``/``last_ckpt`` left null is ``ckpt_dir``."""
    nodes = cfg.get("callbacks") or OmegaConf.create({})
    fill = {"dirpath": str(ckpt_dir), "last_ckpt": str(ckpt_dir / "last.ckpt")}
    example = "_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val_loss"
    entries = group_entries(nodes, "callbacks", "callback", example, fill)
    return [instantiate(node, **given) for _, node, given in entries]


def run_tags(cfg: DictConfig, category: str, layer: str) -> list[str]:
    """The job's tags (W&B): dataset, category, layer, loss, attention and model, then ``cfg.tags``."""
    return [
        f"dataset:{cfg.dataset.name}",
        f"category:{category}",
        f"layer:{layer}",
        f"loss:{cfg.loss.name}",
        f"attention:{cfg.attention.variant}",
        f"model:{cfg.model.name}",
        *list(cfg.tags),
    ]


def build_loggers(cfg: DictConfig, run_dir: Path, category: str, layer: str) -> list[pl.loggers.Logger]:
    """The ``logger`` group's loggers (conf/logger/, ``anomaly_attn.training.loggers``) for this job: its run
    directory, run name and tags where an entry leaves them null, its public config and provenance."""
    return instantiate_loggers(
        logger_nodes(cfg),
        run_dir,
        run_name(cfg, category, layer),
        run_tags(cfg, category, layer),
        hparams={**public_config(cfg), "provenance": job_fingerprint(cfg)},
    )


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without anything that looks like a secret (keys, tokens, passwords)."""
    return scrub_secrets(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[return-value]


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config, secrets scrubbed, as the run directory's config.yaml."""
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(public_config(cfg))))


def write_per_image_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


TRAINER_TARGETS = ("lightning.pytorch.Trainer", "pytorch_lightning.Trainer", "lightning.Trainer")


def make_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list, **overrides: Any
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer``; ``overrides`` replace its arguments (e.g. ``devices=1``). The
    speed keys (``channels_last``, ``cpu_bf16``, ``compile``: :func:`trainer_speed`) are not Trainer
    arguments; ``cpu_bf16`` decides ``precision`` on CPUs (``training.speed.resolve_precision``)."""
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    target = trainer_kwargs.pop("_target_", TRAINER_TARGETS[0])
    if target not in TRAINER_TARGETS:
        raise ValueError(
            f"trainer._target_={target!r}: the pipeline builds a Lightning Trainer itself, so "
            f"trainer._target_ must be {TRAINER_TARGETS[0]} (or be left out). Put Trainer arguments under "
            "trainer.* and extra callbacks in a callback class of this package."
        )
    trainer_kwargs.update(overrides)
    if "plugins" not in trainer_kwargs and submitit_on_slurm():
        # One requeue mechanism: submitit's (it requeues on its preemption signal after the job has
        # stopped, anomaly_attn.training.interruption); Lightning's own SLURM auto-requeue would be a second.
        from lightning.fabric.plugins.environments import SLURMEnvironment

        trainer_kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs, speed_options(trainer_kwargs))
    return pl.Trainer(
        default_root_dir=str(run_dir),
        logger=loggers if loggers else False,
        callbacks=callbacks,
        enable_progress_bar=progress_enabled(),
        **trainer_kwargs,
    )


def submitit_on_slurm() -> bool:
    """True inside a job that submitit started on SLURM."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "SUBMITIT_FOLDER" in os.environ and SLURMEnvironment.detect()


def trainer_speed(cfg: DictConfig) -> SpeedOptions:
    """The speed options of ``cfg.trainer`` (``anomaly_attn.training.speed``), checked."""
    return speed_options(OmegaConf.to_container(cfg.trainer, resolve=True))


def completed_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job that already finished in ``run_dir`` when ``skip_completed`` is on and its
    recorded fingerprint (config and code digests, see :mod:`anomaly_attn.common.fingerprint`) matches this
    job's, so a re-run sweep only runs what is missing or stale; else None. Creates ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.json"
    if not (cfg.get("skip_completed") and metrics_path.exists()):
        return None
    try:
        recorded = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as error:
        log.warning("Re-running %s: its metrics.json is unreadable (%s).", run_dir, error)
        return None
    reason = stale_reason(recorded, job_fingerprint(cfg))
    if reason is not None:
        log.warning("Re-running %s although it has a metrics.json: %s.", run_dir, reason)
        return None
    log.info("Skipping %s: metrics.json exists for this config and code (set skip_completed=false to "
             "re-run).", run_dir)
    return recorded


def job_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """This job's ``fingerprint`` block (config and code digests, version, commit)."""
    return fingerprint(public_config(cfg))


def train_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one model on one category, choose its checkpoint and thresholds on validation data,
    score the test set and write the run directory. Returns the metrics written to metrics.json."""
    run_dir = Path(run_dir)
    # Also with resume=true: a sweep re-run with resume=true continues the killed jobs only.
    completed = completed_metrics(cfg, run_dir)
    if completed is not None:
        return completed

    set_threads(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    module = build_module(cfg)  # validates model, layer, loss, attention before any data work
    selection_settings(cfg, module)  # and the selection grid, before any data work
    speed = trainer_speed(cfg)  # and the trainer's speed keys
    module.configure_speed(channels_last=speed.channels_last, compile_training=speed.compile)
    layer = module.layer
    datamodule = AnomalyDataModule(dataset, category=category, seed=int(cfg.seed))
    datamodule.setup("fit")
    module.set_mean_image(datamodule.mean_image())
    write_run_config(cfg, run_dir)
    # Built before training: a validation split too small, or images too small for a generator, fail now.
    synthetic = synthetic_validation(cfg, datamodule, run_dir) if cfg.validation.generators else None

    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    # A job that SLURM requeued (time limit, preemption) continues its own last.ckpt, resume=true or not.
    resume = bool(cfg.get("resume")) or requeued_attempt() > 0
    resume_from = str(last_ckpt) if resume and last_ckpt.exists() else None
    if resume and resume_from is None:
        log.warning("resume=true but %s does not exist: training from scratch.", last_ckpt)
    elif resume_from is not None and not cfg.get("resume"):
        log.info("SLURM requeued this job (attempt %d): resuming from %s.", requeued_attempt() + 1, last_ckpt)

    throughput = TrainingThroughput()
    configured = build_callbacks(cfg, ckpt_dir)  # conf/callbacks/: best/last checkpoints, RNG, signal
    checkpoints = [c for c in configured if isinstance(c, pl.callbacks.ModelCheckpoint)]
    checkpointing = next((c for c in checkpoints if c.monitor is not None), None)
    visualizer = AnomalyMapVisualizer(run_dir / "figures", **OmegaConf.to_container(cfg.visualization))
    loggers = build_loggers(cfg, run_dir, category, layer)
    callbacks = [*checkpoints, throughput, visualizer, *(c for c in configured if c not in checkpoints)]
    callbacks += attention_schedule_callbacks(module.attention_cfg, module.optimizer_cfg)
    trainer = make_trainer(cfg, run_dir, loggers, callbacks)
    # How training ran (bf16 autocast only where trainer.cpu_bf16 / trainer.precision turned it on).
    training_format = {"precision": str(trainer.precision), "channels_last": module.channels_last}
    try:
        fit_start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        fit_s = time.perf_counter() - fit_start
        epochs = completed_epochs(trainer, last_ckpt)
        trainer = scoring_trainer(cfg, run_dir, trainer, loggers, visualizer)
        if trainer is None:
            return {}  # a DDP process other than rank 0: rank 0 scores and writes the run directory

        best_path = (checkpointing.best_model_path if checkpointing else "") or str(last_ckpt)
        state = torch.load(best_path, map_location=module.device, weights_only=True)
        module.load_state_dict(state["state_dict"])
        metrics = score_and_write(
            cfg,
            module,
            datamodule,
            trainer,
            run_dir,
            loggers,
            extra={
                "epochs": epochs,
                "best_epoch": int(state.get("epoch", -1)),
                "resumed_from": resume_from,
                "n_train": len(datamodule.train_set),
                "training": training_format,
            },
            timing={"train_images_per_s": throughput.images_per_s, "fit_s": fit_s},
            synthetic=synthetic,
        )
        return metrics
    finally:
        close_wandb()


def completed_epochs(trainer: pl.Trainer, last_ckpt: Path) -> int:
    """Epochs trained in total (resumed ones included). After a ``ddp_spawn`` fit the main process's
    trainer does not get the loop progress back (its ``current_epoch`` is 0): read it from last.ckpt."""
    if trainer.current_epoch > 0 or not last_ckpt.exists():
        return trainer.current_epoch
    state = torch.load(last_ckpt, map_location="cpu", weights_only=True, mmap=True)
    return int(state["epoch"]) + 1


def scoring_trainer(
    cfg: DictConfig, run_dir: Path, fit_trainer: pl.Trainer, loggers: list, visualizer: pl.Callback
) -> pl.Trainer | None:
    """The trainer that calibrates and scores: the fit trainer itself in a single-process run.

    After a multi-process (DDP) fit, a new one-device trainer on global rank 0 and None on the other
    ranks: DistributedSampler would pad and split the test set, and the validation quantiles and the
    per-image rows are per process, so scoring on one process gives exactly the single-process numbers
    (no duplicated or missing images). The process group is released first so that the metrics'
    ``compute()`` does not wait for the other ranks.
    """
    if fit_trainer.world_size == 1:
        return fit_trainer
    rank = fit_trainer.global_rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    return make_trainer(cfg, run_dir, loggers, [visualizer], devices=1, num_nodes=1, strategy="auto")


# Command-line keys that fix a part of the map: selection then chooses only the rest.
_FIXING_OVERRIDES = {
    "layer": "layer",
    "attention": "variant",
    "attention.variant": "variant",
    "attention.input": "input",
    "attention.fusion": "fusion",
    "attention.smoothing_sigma": "smoothing_sigma",
    "evaluation.score": "score",
}


def fixed_keys_from_overrides(overrides: list[str]) -> list[str]:
    """Selection keys that command-line overrides (``layer=...``, ``attention=gradcam``, ...) fix."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in _FIXING_OVERRIDES:
            keys.append(_FIXING_OVERRIDES[key])
    return sorted(set(keys))


def add_fixed_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Record in ``cfg.selection.fix`` what the command line fixed (entry points call this)."""
    with open_dict(cfg):
        current = list(cfg.selection.get("fix") or [])
        cfg.selection.fix = sorted(set(current) | set(fixed_keys_from_overrides(overrides)))


def fixed_selection(cfg: DictConfig, module: AnomalyModule) -> dict[str, Any]:
    """The map keys selection must keep, with their values: a configured ``layer`` always, and what
    ``selection.fix`` names (from the command line)."""
    attention = module.attention_cfg
    values = {
        "layer": module.layer,
        "variant": attention["variant"],
        "input": attention.get("input", "residual"),
        "fusion": attention.get("fusion", "none"),
        "smoothing_sigma": float(attention.get("smoothing_sigma", 0.0)),
        "score": module.evaluation["score"],
    }
    keys = set(cfg.selection.get("fix") or [])
    if cfg.get("layer") is not None:
        keys.add("layer")
    if values["variant"] in CONTROL_MAPS:
        keys.discard("layer")  # a control map has no layer
    return {key: values[key] for key in sorted(keys)}


def synthetic_validation(
    cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path
) -> SyntheticValidation:
    """Held-out normal images plus the same images with synthetic anomalies (never test images), and a
    figure of samples in ``figures/validation_samples.png``."""
    validation = cfg.validation
    synthetic = build_synthetic_validation(
        datamodule.val_set.images_tensor() if len(datamodule.val_set) else torch.empty(0),
        datamodule.train_images_tensor(),
        list(validation.generators),
        seed=int(cfg.seed),
        max_images=validation.get("max_images"),
        options=OmegaConf.to_container(validation.get("options") or {}, resolve=True),
        val_fraction=float(cfg.dataset.val_fraction),
    )
    figure_samples = int(validation.get("figure_samples", 8))
    if figure_samples > 0:  # 0: no figure (the set itself is still built and used)
        save_samples_figure(synthetic, run_dir / "figures" / "validation_samples.png", figure_samples)
    return synthetic


def selection_settings(cfg: DictConfig, module: AnomalyModule) -> SelectionSettings:
    """``cfg.selection`` checked against the model's layers (unknown names fail, listing valid ones)."""
    settings = SelectionSettings.from_config(OmegaConf.to_container(cfg.selection, resolve=True))
    settings.validate(module.model.layer_names())
    return settings


def select_on_validation(
    cfg: DictConfig,
    module: AnomalyModule,
    datamodule: AnomalyDataModule,
    run_dir: Path,
    synthetic: SyntheticValidation | None = None,
) -> tuple[SelectionResult | None, SyntheticValidation | None]:
    """Choose the anomaly map and image score on synthetic validation data (``selection.map=auto``)
    and install them in ``module``; None when selection is off or there are no synthetic anomalies.
    ``synthetic``: the validation set if already built (else built here)."""
    settings = selection_settings(cfg, module)
    if not cfg.validation.generators:
        if settings.map == "auto":
            log.warning("validation=none: no synthetic anomalies, so the configured map is used as is.")
        return None, None
    synthetic = synthetic if synthetic is not None else synthetic_validation(cfg, datamodule, run_dir)
    module.eval()
    model_cfg = cfg.model
    layers = settings.layers or spatial_layers(
        module.model, int(model_cfg.image_size), int(model_cfg.in_channels)
    )
    if settings.map == "fixed":
        warn_if_configured_layer_degenerate(module, synthetic, layers)
        return None, synthetic
    result = select_maps(
        module.engine,
        synthetic.images,
        synthetic.masks,
        synthetic.labels,
        settings,
        fixed_selection(cfg, module),
        layers,
        batch_size=int(cfg.dataset.batch_size),
    )
    module.engine.set_selected_maps(result.map, result.score)
    warn_degenerate_layer(result)
    return result, synthetic


def warn_if_configured_layer_degenerate(
    module: AnomalyModule, synthetic: SyntheticValidation, layers: list[str]
) -> None:
    """selection.map=fixed with an alpha-based variant: measure alpha at the configured layer on the
    validation normals and warn, naming layers with a genuine alpha, when it is degenerate there."""
    spec = module.engine.map_spec
    if spec.source != "attention" or spec.variant not in alpha_variants():
        return
    clean = synthetic.images[synthetic.labels == 0][:16].to(module.device)
    measured_layers = list(dict.fromkeys([*layers, spec.layer]))
    health = alpha_health(module.model, module.network_input(clean), measured_layers)
    if health[spec.layer].degenerate:
        healthy = [name for name, value in health.items() if not value.degenerate]
        log.warning(
            "Layer %s: the Grad-CAM channel weights alpha are degenerate there (measured "
            "alpha_circular=%.2g: float noise or a zero-padding artifact), so the %s map there is not "
            "attention. Layers with a genuine alpha: %s; or use attention=layercam / gradcam_pp.",
            spec.layer, health[spec.layer].alpha_circular, spec.variant, ", ".join(healthy) or "none",
        )


def warn_degenerate_layer(result: SelectionResult) -> None:
    """A fixed layer whose Grad-CAM weights α are degenerate: say so and name healthier layers."""
    layer = result.fixed.get("layer")
    health = result.alpha_health.get(layer) if layer else None
    if not health or not health.get("degenerate"):
        return
    healthy = [name for name, value in result.alpha_health.items() if not value.get("degenerate")]
    message = (
        f"Layer {layer}: the Grad-CAM channel weights alpha are degenerate there (measured "
        f"alpha_circular={health.get('alpha_circular', float('nan')):.2g}: a zero-padding artifact), so "
        f"seed/gradcam/gradcam_abs maps there are not attention; selection kept {result.map.label}. "
        f"Layers with genuine alpha: {', '.join(healthy) or 'none'}."
    )
    result.notes.append(message)
    log.warning(message)


def validation_metrics(
    module: AnomalyModule, synthetic: SyntheticValidation, cfg: DictConfig
) -> dict[str, dict[str, float]]:
    """Validation (synthetic) pixel AUROC/AUPRO and image AUROC of the selected map and every control."""
    specs = [module.engine.map_spec, *(MapSpec(source=name) for name in CONTROL_MAPS)]
    scores = score_specs_on(
        module.engine,
        synthetic.images,
        synthetic.masks,
        synthetic.labels,
        specs,
        batch_size=int(cfg.dataset.batch_size),
        max_map_size=int(cfg.selection.max_map_size),
        description="validation: the selected map and the controls",
    )
    return {name: scores[spec] for name, spec in zip(("selected", *CONTROL_MAPS), specs, strict=True)}


def posthoc_test_analysis(
    cfg: DictConfig, module: AnomalyModule, datamodule: AnomalyDataModule, result: SelectionResult
) -> float:
    """POST-HOC ANALYSIS ONLY (``selection.posthoc_test=true``), after the choice is made and tested:
    every candidate scored on the test set, and the Spearman correlation of validation and test
    objective over the candidates, so users see how far validation ranks predict test ranks."""
    batches = list(datamodule.test_dataloader())
    images = torch.cat([batch["image"] for batch in batches])
    masks = torch.cat([batch["mask"] for batch in batches])
    labels = torch.cat([batch["label"] for batch in batches])
    specs = [candidate.spec for candidate in result.candidates]
    scores = score_specs_on(
        module.engine, images, masks, labels, specs,
        batch_size=int(cfg.dataset.batch_size), max_map_size=int(cfg.selection.max_map_size),
        description="post-hoc: every candidate on the test images",
    )
    pairs = []
    for candidate in result.candidates:
        candidate.test = scores[candidate.spec]
        pairs.append((objective_value(candidate.validation, result.objective),
                      objective_value(candidate.test, result.objective)))
    return spearman(pairs)


def describe_selection_to_loggers(loggers: list, module: AnomalyModule) -> None:
    """The selected map and image score into every logger's hyper-parameters (the W&B run's config, the
    CSV log's hparams.yaml), next to the configured keys."""
    map_spec = module.engine.map_spec
    chosen = {
        "selected_map": map_spec.label,
        "selected_layer": map_spec.layer,
        "selected_variant": map_spec.variant or map_spec.source,
        "image_score": module.engine.score_spec.label,
    }
    for logger in loggers:
        logger.log_hyperparams(chosen)


def save_model_checkpoint(module: AnomalyModule, path: Path) -> None:
    """Weights, buffers (mean image, validation thresholds) and hyper-parameters only: what
    evaluate/predict need, loadable with ``torch.load(..., weights_only=True)`` and
    ``AnomalyModule.load_from_checkpoint``. Written then renamed, so a kill leaves no torn file."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams),
                "selected_maps": module.engine.selected_maps_state(),
                "pytorch-lightning_version": pl.__version__,
            },
            tmp,
        )


def score_and_write(
    cfg: DictConfig,
    module: AnomalyModule,
    datamodule: AnomalyDataModule,
    trainer: pl.Trainer,
    run_dir: Path,
    loggers: list,
    extra: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
    synthetic: SyntheticValidation | None = None,
) -> dict[str, Any]:
    """Choose the map on synthetic validation data, calibrate thresholds on validation normals, save
    model.ckpt, score the test set once, write metrics.json and per_image_scores.csv. Shared by training
    and re-evaluation of a checkpoint. Nothing before ``trainer.test`` reads the test split."""
    selection, synthetic = select_on_validation(cfg, module, datamodule, Path(run_dir), synthetic)
    describe_selection_to_loggers(loggers, module)
    thresholds = module.engine.calibrate(datamodule.val_dataloader())
    final_ckpt = Path(run_dir) / "checkpoints" / "model.ckpt"
    save_model_checkpoint(module, final_ckpt)

    test_start = time.perf_counter()
    datamodule.setup("test")
    trainer.test(module, datamodule=datamodule, verbose=False)
    test_s = time.perf_counter() - test_start
    n_test = len(module.per_image_rows)

    metrics = module.test_metrics()
    if synthetic is not None:
        validation = validation_metrics(module, synthetic, cfg)
        metrics["validation"] = validation["selected"]
        for name in CONTROL_MAPS:
            metrics["controls"][name]["validation"] = validation[name]
    if selection is not None:
        block = selection.summary()
        if cfg.selection.get("posthoc_test"):
            block["posthoc_spearman"] = posthoc_test_analysis(cfg, module, datamodule, selection)
            block["candidates"] = [candidate.to_dict() for candidate in selection.candidates]
            block["posthoc_note"] = "test scores of every candidate: post-hoc analysis, never used to choose"
        metrics["selection"] = block
    if not module.has_pixel_ground_truth:
        log.warning("The test set of %s/%s has no pixel masks: pixel metrics skipped.",
                    cfg.dataset.name, datamodule.category)
    elif module.images_without_masks:
        missing = module.images_without_masks
        log.warning(
            "%d anomalous test image(s) of %s/%s have no mask and are left out of the pixel metrics "
            "(image metrics include them): %s%s",
            len(missing), cfg.dataset.name, datamodule.category, ", ".join(missing[:20]),
            f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "",
        )
    metrics["n_test_without_mask"] = len(module.images_without_masks)
    metrics.update(
        dataset=cfg.dataset.name,
        category=datamodule.category,
        model=cfg.model.name,
        layer=module.engine.map_spec.layer,
        attention=module.engine.map_spec.variant or module.engine.map_spec.source,
        selected_map=module.engine.map_spec.label,
        image_score=module.engine.score_spec.label,
        loss=cfg.loss.name,
        seed=int(cfg.seed),
        experiment=cfg.experiment_name,
        thresholds=thresholds,
        checkpoint=str(final_ckpt),
        n_val=len(datamodule.val_set),
        n_test=n_test,
        provenance=job_fingerprint(cfg),
    )
    metrics.update(extra or {})
    metrics["timing"] = {
        "train_images_per_s": float("nan"),
        "fit_s": 0.0,
        **(timing or {}),
        "test_images_per_s": n_test / test_s if test_s > 0 else float("nan"),
        "test_s": test_s,
    }
    write_per_image_scores(Path(run_dir) / "per_image_scores.csv", module.per_image_rows)
    write_json_atomic(Path(run_dir) / "metrics.json", metrics)
    for logger in loggers:
        logger.log_metrics(flatten_metrics(metrics))
    log.info("Metrics written to %s", Path(run_dir) / "metrics.json")
    return metrics


def flatten_metrics(metrics: dict[str, Any], prefix: str = "test/") -> dict[str, float]:
    """Numeric leaves as 'test/pixel_auroc', 'test/controls/residual_l2/pixel_auroc', ..."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat
