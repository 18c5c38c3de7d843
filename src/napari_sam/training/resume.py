"""Resumable training: everything a run needs to continue where it stopped.

``state.pt`` beside ``micro_sam_latest.pt`` holds the model, the optimizer (and
the training-only dense head), the step, the training seconds spent so far,
the numpy and torch random states (scenes and prompts continue as if the run
had never stopped) and the stack source's current stack. It is written next to
each checkpoint, through a temporary file and a rename, so a run killed at any
moment resumes from its last checkpoint. The file is this project's own (it
pickles the numpy generator state and the stack source) and is loaded with
``weights_only=False``: resume only runs you made yourself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "state.pt"


@dataclass
class ResumeState:
    """What :func:`load_state` returns (see the module docstring)."""

    step: int
    elapsed_s: float
    data_time_s: float
    model: dict
    optimizer: dict
    head: dict | None
    numpy_rng: dict
    torch_gen: Any
    stacks: Any


def save_state(
    out_dir, *, model, optimizer, head, rng, gen, stacks, step, elapsed_s, data_time_s
) -> Path:
    """Write ``out_dir/state.pt`` atomically; returns its path."""
    import torch

    path = Path(out_dir) / STATE_FILE
    state = {
        "step": int(step),
        "elapsed_s": float(elapsed_s),
        "data_time_s": float(data_time_s),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "head": None if head is None else head.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_gen": gen.get_state(),
        "stacks": stacks,
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(out_dir) -> ResumeState | None:
    """The saved state of the run in ``out_dir``, or None when it has none."""
    import torch

    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=False)
    return ResumeState(
        step=int(raw["step"]),
        elapsed_s=float(raw["elapsed_s"]),
        data_time_s=float(raw["data_time_s"]),
        model=raw["model"],
        optimizer=raw["optimizer"],
        head=raw["head"],
        numpy_rng=raw["numpy_rng"],
        torch_gen=raw["torch_gen"],
        stacks=raw["stacks"],
    )
