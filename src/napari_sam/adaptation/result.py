"""What adaptation returns: the report, the adapted predictor, saving and loading.

A saved adapted model is two files side by side:

* ``MODEL.pt``: the model's plain state dict (tensors only, every weight, read
  with ``torch.load(..., weights_only=True)``), so ``napari_sam.load_model(path)``,
  ``Predictor(path)`` and every ``--model PATH`` option load it like any
  checkpoint;
* ``MODEL.json``: the record (:func:`napari_sam.model.registry.adapted_record_path`):
  base model name and fingerprint, the objects used, settings, the report.
  ``root_model`` names the registry model at the root of the chain, whose
  recommended propagation and everything-mode options the adapted model uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: ``format`` field of the JSON record of an adapted model.
RECORD_FORMAT = "napari-sam adapted model"
RECORD_VERSION = 1


class SaveError(OSError):
    """The adapted model could not be written; the result stays usable in memory."""


@dataclass
class AdaptationReport:
    """What was done and what it gave.

    Attributes
    ----------
    base_model : name of the input predictor's model (registry name or path)
    root_model : the registry model at the root (what recommendations follow)
    base_fingerprint : :func:`napari_sam.store.model_fingerprint` of the base weights
    trained : ``"all"`` (bundled micro) or ``"prompt_encoder+mask_decoder"`` (ViT models)
    objects_train, objects_check : ``(image index, id)`` of the objects trained on and
        held back for the check (a 3D id is one object)
    instances_train : 2D instances (object x slice) trained on
    before, after : mean IoU on the held-back objects, ``{"point", "box"}`` plus
        per-object lists (``point_per_object``, ``box_per_object``)
    kept_base : True when the adapted model was not better: ``result.predictor``
        is then the base predictor
    reason : why the adapted model was kept or not
    weak_check : fewer than 3 objects (see ``notes``)
    steps, planned_steps : optimizer steps done and planned; ``stopped_by``
        ``"steps"``, ``"time"`` or ``"diverged"``
    seconds_train, seconds_total : wall-clock time of the training loop and of
        the whole call; ``threads`` torch threads used
    settings : the recipe (:class:`~napari_sam.adaptation.training.AdaptSettings`)
    seed, time_limit_s, holdout : the call's arguments
    notes : skipped objects, weak-check warnings
    """

    base_model: str
    root_model: str
    base_fingerprint: str
    trained: str
    objects_train: list[tuple[int, int]]
    objects_check: list[tuple[int, int]]
    instances_train: int
    before: dict[str, Any]
    after: dict[str, Any]
    kept_base: bool
    reason: str
    weak_check: bool
    steps: int
    planned_steps: int
    stopped_by: str
    seconds_train: float
    seconds_total: float
    threads: int
    settings: dict[str, Any]
    seed: int
    time_limit_s: float
    holdout: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects_train"] = [list(k) for k in self.objects_train]
        d["objects_check"] = [list(k) for k in self.objects_check]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaptationReport:
        d = dict(d)
        d["objects_train"] = [tuple(k) for k in d.get("objects_train", [])]
        d["objects_check"] = [tuple(k) for k in d.get("objects_check", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def summary(self) -> str:
        """A few lines for people: objects, before -> after, the decision, time."""
        b, a = self.before, self.after
        lines = [
            f"adapted {self.base_model} ({self.trained} weights) on "
            f"{len(self.objects_train)} object(s) ({self.instances_train} slice instance(s)), "
            f"checked on {len(self.objects_check)} held-back object(s)",
            f"held-back IoU, centre click: {b['point']:.3f} -> {a['point']:.3f}; "
            f"tight box: {b['box']:.3f} -> {a['box']:.3f}",
            ("kept the base model: " if self.kept_base else "using the adapted model: ")
            + self.reason,
            f"{self.steps} steps ({self.stopped_by}), training {self.seconds_train:.1f} s, "
            f"total {self.seconds_total:.1f} s on {self.threads} thread(s)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class AdaptationResult:
    """The outcome of :func:`napari_sam.adapt`.

    Attributes
    ----------
    predictor : the predictor to use from now on: the adapted one, or the base
        (input) predictor when ``report.kept_base``
    adapted : the adapted predictor (also when it was not kept)
    base : the input predictor (untouched)
    report : :class:`AdaptationReport`
    saved_to : path of the weights after :meth:`save`, else None
    """

    def __init__(self, adapted, base, report: AdaptationReport) -> None:
        self.adapted = adapted
        self.base = base
        self.report = report
        self.saved_to: Path | None = None

    @property
    def predictor(self):
        return self.base if self.report.kept_base else self.adapted

    def __repr__(self) -> str:
        r = self.report
        state = "kept base" if r.kept_base else "adapted"
        return (
            f"AdaptationResult({state}, click {r.before['point']:.3f}->{r.after['point']:.3f}, "
            f"box {r.before['box']:.3f}->{r.after['box']:.3f})"
        )

    def record(self) -> dict[str, Any]:
        """The JSON record saved next to the weights."""
        import torch

        from napari_sam import __version__

        return {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "base_model": self.report.base_model,
            "root_model": self.report.root_model,
            "base_fingerprint": self.report.base_fingerprint,
            "fingerprint": getattr(self.adapted, "fingerprint", None),
            "trained": self.report.trained,
            "kept_base": self.report.kept_base,
            "objects": {
                "train": [list(k) for k in self.report.objects_train],
                "check": [list(k) for k in self.report.objects_check],
            },
            "settings": self.report.settings,
            "report": self.report.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "napari_sam_version": __version__,
            "torch_version": torch.__version__,
        }

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the adapted weights to ``path`` and the record next to it (``.json``).

        Both files are written to temporary names and renamed, so a failure
        leaves neither a half-written file nor a stale pair.

        Parameters
        ----------
        path : the weights' file, e.g. ``"nuclei_adapted.pt"``
        force : also save when the adapted model was not better (``report.kept_base``)

        Returns
        -------
        Path of the weights.

        Raises
        ------
        ValueError
            The adapted model was not kept and ``force`` is False.
        SaveError
            (an ``OSError``) the disk is full, read-only or the folder missing;
            ``result.predictor`` stays usable in memory.
        """
        import torch

        from napari_sam.model.registry import adapted_record_path

        if self.report.kept_base and not force:
            raise ValueError(
                "the adapted model was not better than the base model on the held-back "
                f"objects ({self.report.reason}); nothing saved. Pass force=True to save it "
                "anyway"
            )
        path = Path(path)
        record_path = adapted_record_path(path)
        if record_path == path:
            raise ValueError(
                f"{path} ends in .json, which is where the record goes; save the weights as "
                f"{path.with_suffix('.pt')}"
            )
        state = {
            k: v.detach().cpu().contiguous() for k, v in self.adapted.model.state_dict().items()
        }
        text = json.dumps(self.record(), indent=1)
        tmp_w = path.with_name(path.name + ".tmp")
        tmp_r = record_path.with_name(record_path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp_w)
            tmp_r.write_text(text)
            os.replace(tmp_w, path)
            os.replace(tmp_r, record_path)
        except OSError as err:
            for tmp in (tmp_w, tmp_r):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            why = {
                errno.ENOSPC: "the disk is full",
                errno.EROFS: "the disk is read-only",
                errno.EACCES: "permission denied",
                errno.EPERM: "permission denied",
            }.get(err.errno or -1, err.strerror or type(err).__name__)
            raise SaveError(
                err.errno,
                f"could not save the adapted model to {path} ({why}). The adapted model is "
                "still in use in memory (result.predictor); save it to another folder with "
                "result.save(other_path)",
            ) from err
        self.saved_to = path
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str = "auto", precision: str = "auto"
    ) -> AdaptationResult:
        """A saved adapted model with its report (the base predictor is not loaded: None)."""
        from napari_sam.predictor import Predictor

        record = read_record(path)
        if record is None:
            raise ValueError(
                f"{path} has no adaptation record next to it "
                f"({Path(path).with_suffix('.json')}); load the weights with "
                "napari_sam.Predictor(path) instead"
            )
        adapted = Predictor(path, device=device, precision=precision)
        report = AdaptationReport.from_dict(record["report"])
        report.kept_base = False  # the saved weights are what the user asked for
        result = cls(adapted, None, report)
        result.saved_to = Path(path)
        return result


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON record of a saved adapted model, or None when ``path`` has none."""
    from napari_sam.model.registry import adapted_record_path

    record_path = adapted_record_path(path)
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record


def adapted_model_path(
    image_name: str, base_model: str, folder: str | os.PathLike | None = None
) -> Path:
    """Where to keep an adapted model: ``<cache>/adapted/<image>__<base>.pt``.

    ``image_name`` and ``base_model`` are reduced to file-name-safe characters;
    ``folder`` defaults to ``napari_sam.model.checkpoint.cache_dir() / "adapted"``.
    """
    import re

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(text)).stem).strip("._") or "model"

    if folder is None:
        from napari_sam.model.checkpoint import cache_dir

        folder = cache_dir() / "adapted"
    return Path(folder) / f"{safe(image_name)}__{safe(base_model)}.pt"
