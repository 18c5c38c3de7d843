"""Command line of the training subpackage (``python -m napari_sam.training ...``).

Subcommands
-----------
``train``     train a micro model from scratch, writing checkpoints and a JSON record
``validate``  print the held-out validation table of a checkpoint
``export``    copy a run's weights and record into ``napari_sam/weights/`` and print
              the sha256 to record in :mod:`napari_sam.model.bundled`
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m napari_sam.training",
        description="Train, validate and export the bundled micro SAM model.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a micro model on synthetic scenes")
    t.add_argument("--out", required=True, help="output folder for checkpoints and the record")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    t.add_argument(
        "--minutes", type=float, default=None, help="training-time budget (default 50)"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (its saved configuration; --steps/--minutes may "
        "raise the budget); other settings are ignored",
    )
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--images-per-step", type=int, default=None)
    t.add_argument("--objects-per-image", type=int, default=None)
    t.add_argument("--rounds", type=int, default=None, help="interactive rounds per object")
    t.add_argument("--val-every", type=int, default=None, help="steps between validations")
    t.add_argument(
        "--preset",
        choices=("default", "tiny"),
        default="default",
        help="tiny: a minute-sized model on 64 px scenes, for smoke tests",
    )
    t.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning stage)")
    t.add_argument(
        "--config",
        default=None,
        help='JSON of TrainConfig overrides, e.g. \'{"mask_prompt_prob": 0.3, '
        '"data": {"other_shape_prob": 0.5}}\'',
    )
    t.add_argument(
        "--model",
        default=None,
        help='JSON of micro_config keyword arguments, e.g. \'{"embed_dim": 64}\'',
    )

    v = sub.add_parser("validate", help="held-out validation table of a checkpoint")
    v.add_argument("weights", help="checkpoint file (.pt)")
    v.add_argument("--sets", nargs="*", default=None, help="validation set names")
    v.add_argument("--json", default=None, help="also write the results to this JSON file")

    e = sub.add_parser("export", help="copy a run's weights into the package")
    e.add_argument("run", help="training output folder")
    e.add_argument("--validation", default=None, help="validation JSON to add to the record")
    e.add_argument(
        "--dest",
        default=str(Path(__file__).resolve().parents[1] / "weights"),
        help="destination folder (default: the package's weights folder)",
    )
    return p


def _train(args) -> int:
    from napari_sam.training.loop import TrainConfig, small_test_config, train
    from napari_sam.training.validation import quick_validation

    out = Path(args.out)
    if args.resume:
        return _resume(args, out)
    base = small_test_config() if args.preset == "tiny" else TrainConfig()
    cfg = replace(
        base,
        steps=args.steps if args.steps is not None else 1000,
        time_limit_s=(args.minutes if args.minutes is not None else 50.0) * 60.0,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    changes = {}
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.images_per_step is not None:
        changes["images_per_step"] = args.images_per_step
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.val_every is not None:
        changes["val_every"] = args.val_every
    if args.model is not None:
        changes["model"] = json.loads(args.model)
    if args.objects_per_image is not None:
        changes["data"] = replace(cfg.data, objects_per_image=args.objects_per_image)
    if args.init is not None:
        changes["init_weights"] = args.init
    cfg = replace(cfg, **changes)
    if args.config is not None:
        cfg = cfg.updated(json.loads(args.config))
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m napari_sam.training " + " ".join(args.argv)
    validate = quick_validation if args.preset == "default" else None
    result = train(cfg, out, log=_log, validate=validate, command=command)
    record = result.record
    (out / "training_record.json").write_text(json.dumps(record, indent=1))
    _log(f"done: {record['steps_done']} steps in {record['train_time_s']:.0f} s; "
        f"weights {out / 'micro_sam_latest.pt'} sha256 {record['weights_sha256']}")
    return 0


def _validate(args) -> int:
    import torch

    from napari_sam.model.checkpoint import model_from_state_dict, read_state_dict
    from napari_sam.predictor import Predictor
    from napari_sam.training.validation import validation_table

    model = model_from_state_dict(read_state_dict(args.weights))
    predictor = Predictor(model, device="cpu", precision="float32")
    print(f"{args.weights}: torch threads {torch.get_num_threads()}")
    results = validation_table(predictor, args.sets, log=print)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _export(args) -> int:
    from napari_sam.training.weights import file_sha256

    run = Path(args.run)
    weights = run / "micro_sam_latest.pt"
    record_path = run / "training_record.json"
    for p in (weights, record_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: is {run} a training output folder?")
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "micro_sam.pt"
    shutil.copyfile(weights, target)
    record = json.loads(record_path.read_text())
    if args.validation:
        record["held_out_validation"] = json.loads(Path(args.validation).read_text())
    sha = file_sha256(target)
    record["bundled_file"] = target.name
    record["bundled_sha256"] = sha
    (dest / "micro_sam.json").write_text(json.dumps(record, indent=1))
    size = target.stat().st_size
    print(f"wrote {target} ({size / 1e6:.2f} MB) and {dest / 'micro_sam.json'}")
    print(f"sha256 {sha}: record it in napari_sam/model/bundled.py")
    return 0


def _log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def _resume(args, out: Path) -> int:
    from napari_sam.training.loop import TrainConfig, train
    from napari_sam.training.validation import quick_validation

    record_path = out / "training_record.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} not found: --resume needs a run started in {out}")
    saved = json.loads(record_path.read_text())
    cfg = TrainConfig.from_dict(saved["train_config"])
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.minutes is not None:
        cfg = replace(cfg, time_limit_s=args.minutes * 60.0)
    has_validation = bool(saved.get("validation")) or cfg.val_every > 0
    result = train(
        cfg, out, log=_log, validate=quick_validation if has_validation else None, resume=True
    )
    record = result.record
    record.setdefault("resume_commands", []).append(
        "python -m napari_sam.training " + " ".join(args.argv)
    )
    (out / "training_record.json").write_text(json.dumps(record, indent=1))
    _log(f"done: {record['steps_done']} steps in {record['train_time_s']:.0f} s; "
         f"weights {out / 'micro_sam_latest.pt'} sha256 {record['weights_sha256']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    handlers = {"train": _train, "validate": _validate, "export": _export}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
