"""The interactive training loop (SAM's simulation, sized for a CPU).

Per step: ``images_per_step`` fresh scenes are embedded once (with gradients);
for each scene up to ``objects_per_image`` objects are decoded together through
``rounds`` interactive rounds:

* round 0: a positive point uniformly inside each object or its jittered
  bounding box (``box_prob``), or, with ``mask_prompt_prob``, a perturbed
  ground-truth mask prompt plus one positive point or (``mask_prompt_box_prob``)
  plus its box grown by 10 % (as propagation prompts); stack slices (see
  :class:`~napari_sam.training.data.DataConfig`) are prompted from the object's
  mask on the neighbouring slice. Single-prompt rounds train the three
  multimask outputs with the minimum loss over the candidates (SAM) and, in
  addition, the single-mask output, so ``multimask=False`` works for one prompt;
* every later round feeds the previous round's low-res logits back as the mask
  prompt and adds a correction click from the error region, except the
  ``no_point_rounds`` rounds (the last one and, when 2, one at random), which
  add no point; these rounds train the single-mask output.

Loss: ``20 * focal + dice`` on the logits upsampled to the model input size
(bilinear, as :meth:`napari_sam.model.sam.Sam.postprocess_masks` does) plus the
MSE of the IoU head against the actual IoU of every trained output, plus an
auxiliary dense loss (foreground and boundaries predicted from the embedding by
a training-only 1x1 conv). AdamW, linear warm-up, cosine decay over
``max(step / steps, elapsed / time_limit)`` so the schedule finishes whichever
budget runs out first.

Three measures make training from scratch feasible on a CPU within an hour (SAM
trains its decoder on 11 M images): a multi-scale random Fourier position
encoding (:func:`init_positional_encoding`), decoder cross-attention started as
position matching (:func:`init_decoder_attention`), and a resolution curriculum
(``resolution_schedule``: first at 128 px, 4x cheaper per step, then at the
model's 256 px, sharing all weights, :func:`training_resolution`).

This module is the run itself (:func:`train`: model, optimizer, resumable
state, the step loop, the training record); one concept per module around it:
:mod:`.config` (:class:`TrainConfig`, :func:`micro_config`), :mod:`.rounds`
(the interactive rounds and their losses), :mod:`.step` (one optimizer step,
the learning-rate schedule, the auxiliary dense head), :mod:`.resolution` (the
resolution curriculum), :mod:`.initialization` (position encoding and decoder
attention at the start), :mod:`.weights` (the weights file),
:mod:`.resume` (``state.pt``). Their public names are importable from here too.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.training.config import TrainConfig, micro_config, small_test_config
from napari_sam.training.initialization import init_decoder_attention, init_positional_encoding
from napari_sam.training.resolution import phase_size, scaled_data, training_resolution
from napari_sam.training.rounds import StepStats, decode_rounds
from napari_sam.training.step import (
    build_optimizer,
    dense_head,
    dense_loss,
    lr_factor,
    train_step,
)
from napari_sam.training.weights import file_sha256, save_weights

__all__ = [
    "StepStats",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "decode_rounds",
    "dense_head",
    "dense_loss",
    "file_sha256",
    "init_decoder_attention",
    "init_positional_encoding",
    "lr_factor",
    "micro_config",
    "phase_size",
    "save_weights",
    "scaled_data",
    "small_test_config",
    "train",
    "train_step",
    "training_resolution",
]


@dataclass
class TrainResult:
    """What :func:`train` returns: the model and the training record."""

    model: Any
    record: dict


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    log: Callable[[str], None] = print,
    validate: Callable[[Any], dict] | None = None,
    resume: bool = False,
    command: str | None = None,
) -> TrainResult:
    """Train a micro model from scratch (or from ``cfg.init_weights``), resumably.

    Parameters
    ----------
    cfg : the run's settings
    out_dir : where ``micro_sam_latest.pt`` (every ``checkpoint_every`` steps and
        at the end) and ``training_record.json`` are written; None writes nothing
    log : called with each log line
    validate : ``validate(model) -> dict`` of metrics, run every ``val_every`` steps
        and at the end (e.g. :func:`napari_sam.training.validation.quick_validation`)
    resume : continue the run saved in ``out_dir`` (its ``state.pt``, see
        :mod:`napari_sam.training.resume`) instead of starting over: model,
        optimizer, step, training seconds, random streams and the record carry
        on; ``cfg`` must be the run's configuration except for ``steps`` and
        ``time_limit_s``, which may be raised to extend it
    command : the command line that started the run, kept in the record from
        the first checkpoint on (a run killed before its end still says how it began)

    Returns
    -------
    TrainResult with the trained model (eval mode) and the record (config,
    generator parameters, per-step log, validation history, timing, sha256).
    """
    import torch

    from napari_sam.model.checkpoint import resolve_device
    from napari_sam.model.sam import build_sam
    from napari_sam.training.data import StackSource, scene_batch

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {cfg.rounds}")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    previous = None
    if cfg.init_weights:
        from napari_sam.model.checkpoint import model_from_state_dict, read_state_dict

        model = model_from_state_dict(read_state_dict(cfg.init_weights))
        if model.config is None:  # (never: built from the configuration it infers)
            raise ValueError(f"no model configuration in {cfg.init_weights}")
        config = model.config
        sibling = Path(cfg.init_weights).with_name("training_record.json")
        if sibling.is_file():
            previous = json.loads(sibling.read_text())
    else:
        config = micro_config(**cfg.model)
        model = build_sam(config)
        gen_init = torch.Generator().manual_seed(cfg.seed + 2)
        init_positional_encoding(model, cfg.pe_scales, gen_init)
        if cfg.attention_init > 0:
            init_decoder_attention(model, cfg.attention_init)
    from napari_sam.training.resume import load_state, save_state

    state = load_state(out_dir) if resume and out_dir is not None else None
    if resume and state is None:
        raise FileNotFoundError(
            f"nothing to resume in {out_dir!r} (no state.pt); start the run without resume"
        )
    if state is not None:
        model.load_state_dict(state.model)
    model = model.to(device)
    head = dense_head(model) if cfg.aux_weight > 0 else None
    optimizer = build_optimizer(model, cfg, extra=head)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        if head is not None and state.head is not None:
            head.load_state_dict(state.head)
        rng.bit_generator.state = state.numpy_rng
        gen.set_state(state.torch_gen)
    n_params = sum(p.numel() for p in model.parameters())
    record: dict[str, Any] = {
        "train_config": cfg.to_dict(),
        "model_config": config.to_dict(),
        "n_parameters": n_params,
        "n_parameters_image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
        "data": {
            "generator": "napari_sam.synthetic.random_scene_2d",
            "note": "each scene draws its kind from kind_weights, then random_scene_2d "
            "randomizes bit depth, photons, read noise, background, illumination, PSF, "
            "object size, density, clustering and texture; see its source for ranges",
        },
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "log": [],
        "validation": [],
    }
    if previous is not None:
        record["previous_stage"] = previous
    if command is not None:
        record["command"] = command
    if state is not None and out_dir is not None:  # (a state comes from out_dir)
        saved = json.loads((Path(out_dir) / "training_record.json").read_text())
        record["log"], record["validation"] = saved.get("log", []), saved.get("validation", [])
        record["sessions"] = saved.get("sessions", [])
        for key in ("previous_stage", "command"):
            if key in saved:
                record[key] = saved[key]
    record.setdefault("sessions", []).append(
        {
            "start_step": 0 if state is None else state.step,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torch_threads": torch.get_num_threads(),
        }
    )
    log(f"micro model: {n_params / 1e6:.2f} M parameters on {device}; {cfg.steps} steps, "
        f"time limit {cfg.time_limit_s:.0f} s")
    out = Path(out_dir) if out_dir is not None else None
    latest = out / "micro_sam_latest.pt" if out is not None else None
    before = 0.0 if state is None else state.elapsed_s
    t0 = time.perf_counter() - before  # elapsed counts the training seconds of all sessions
    data_time = 0.0 if state is None else state.data_time_s
    start = 0 if state is None else state.step
    steps_done = start
    stacks = StackSource() if state is None else state.stacks
    if state is not None:
        log(f"resuming at step {start} after {before:.0f} s of training")
    window: list[StepStats] = []

    def checkpoint(step: int, final: bool = False) -> None:
        _checkpoint(model, record, out, latest, step, t0, data_time, final=final)
        save_state(
            out, model=model, optimizer=optimizer, head=head, rng=rng, gen=gen, stacks=stacks,
            step=step, elapsed_s=time.perf_counter() - t0, data_time_s=data_time,
        )

    for step in range(start, cfg.steps):
        elapsed = time.perf_counter() - t0
        if elapsed >= cfg.time_limit_s:
            log(f"time limit reached after {step} steps")
            break
        progress = max(step / cfg.steps, elapsed / cfg.time_limit_s)
        factor = lr_factor(progress, step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        size = phase_size(cfg.resolution_schedule, progress, config.img_size)
        td = time.perf_counter()
        scenes = scene_batch(
            rng,
            cfg.images_per_step,
            size,
            scaled_data(cfg.data, size / config.img_size),
            stacks,
        )
        data_time += time.perf_counter() - td
        with training_resolution(model, size):
            st = train_step(model, optimizer, scenes, cfg, gen, rng, head)
        steps_done = step + 1
        if not math.isfinite(st.loss):
            raise RuntimeError(f"loss became {st.loss} at step {step}; lower the learning rate")
        window.append(st)
        if (step + 1) % cfg.log_every == 0 or step == 0:
            mean = {k: float(np.mean([getattr(s, k) for s in window])) for k in asdict(st)}
            entry = {
                "step": step + 1,
                "time_s": round(time.perf_counter() - t0, 1),
                "lr": cfg.lr * factor,
                "img_size": size,
                **{k: round(v, 5) for k, v in mean.items()},
            }
            record["log"].append(entry)
            log(
                f"step {step + 1:5d} {entry['time_s']:7.0f}s {size}px lr {entry['lr']:.2e} "
                f"loss {mean['loss']:.4f} focal {mean['focal']:.4f} dice {mean['dice']:.4f} "
                f"iou_mse {mean['iou_mse']:.4f} aux {mean['aux']:.3f} "
                f"IoU first {mean['iou_first']:.3f} last {mean['iou_last']:.3f}"
            )
            window = []
        if validate is not None and cfg.val_every and (step + 1) % cfg.val_every == 0:
            _run_validation(model, validate, record, step + 1, t0, log)
        if latest is not None and (step + 1) % cfg.checkpoint_every == 0:
            checkpoint(step + 1)
    if validate is not None:
        _run_validation(model, validate, record, steps_done, t0, log)
    if latest is not None:
        checkpoint(steps_done, final=True)
    model.eval()
    return TrainResult(model=model, record=record)


def _run_validation(model, validate, record, step, t0, log) -> None:
    model.eval()
    metrics = validate(model)
    model.train()
    record["validation"].append(
        {"step": step, "time_s": round(time.perf_counter() - t0, 1), **metrics}
    )
    log(f"validation at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def _checkpoint(model, record, out, latest, step, t0, data_time, final=False) -> None:
    sha = save_weights(model, latest)
    record["steps_done"] = step
    record["train_time_s"] = round(time.perf_counter() - t0, 1)
    record["data_time_s"] = round(data_time, 1)
    record["weights_sha256"] = sha
    record["finished"] = final
    (out / "training_record.json").write_text(json.dumps(record, indent=1))
