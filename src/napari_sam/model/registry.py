"""Known model checkpoints: where to get them, how to verify them, what they are."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """One known checkpoint.

    Attributes
    ----------
    name : registry name (what users type, e.g. ``"vit_b"``)
    architecture : name of the architecture in :data:`napari_sam.model.sam.CONFIGS`
        or ``"infer"`` to take it from the state dict
    url : download address, or None for weights shipped inside the package
    known_hash : ``"sha256:<hex>"`` (or another algorithm pooch understands)
    size_bytes : expected download size (for messages), or None
    filename : file name in the cache directory
    description : one line for menus and ``napari-sam models``
    propagation : options of :func:`napari_sam.propagation.propagate` measured to
        suit this model better than the generic defaults (used when the caller
        leaves them unset), e.g. ``{"fade_threshold": 0.4}``
    everything : options of :func:`napari_sam.everything.segment_everything`
        measured to suit this model better than the generic defaults (used
        when the caller leaves them unset), e.g. ``{"pred_iou_thresh": 0.6}``
    """

    name: str
    architecture: str
    url: str | None
    known_hash: str | None
    size_bytes: int | None
    filename: str
    description: str
    propagation: Mapping[str, Any] = field(default_factory=dict)
    everything: Mapping[str, Any] = field(default_factory=dict)


#: The model used when none is named (the bundled model once it exists).
DEFAULT_MODEL = "micro"

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"

REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "micro", "infer", None, None, None, "micro_sam.pt",
            "bundled small microscopy SAM (trained here on synthetic data), 8.5 MB, offline",
            # it runs past the ends of nuclei into out-of-focus light: docs/bundled_model.md
            propagation={"prompt_mode": "box+mask+neg", "fade_threshold": 0.4},
            # its IoU head scores most nuclei below SAM's 0.8, its soft mask edges
            # give small nuclei stability scores of 0.7-0.9, and its candidates
            # overlap more (sub-parts, neighbours merged): docs/everything.md
            everything={
                "pred_iou_thresh": 0.6,
                "stability_score_thresh": 0.85,
                "box_nms_thresh": 0.5,
                "containment_thresh": 0.5,
            },
        ),
        ModelInfo(
            "vit_b", "vit_b", _SAM_URL + "sam_vit_b_01ec64.pth",
            "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            375_042_383, "sam_vit_b_01ec64.pth", "SAM ViT-B (Meta, natural images), 375 MB",
        ),
        ModelInfo(
            "vit_l", "vit_l", _SAM_URL + "sam_vit_l_0b3195.pth",
            "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            1_249_524_607, "sam_vit_l_0b3195.pth", "SAM ViT-L (Meta, natural images), 1.2 GB",
        ),
        ModelInfo(
            "vit_h", "vit_h", _SAM_URL + "sam_vit_h_4b8939.pth",
            "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2_564_550_879, "sam_vit_h_4b8939.pth", "SAM ViT-H (Meta, natural images), 2.6 GB",
        ),
        ModelInfo(
            "vit_t", "vit_t",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            None, "mobile_sam.pt",
            "MobileSAM (TinyViT-5M encoder, natural images), 41 MB; much faster than ViT-B",
        ),
        ModelInfo(
            "vit_b_lm", "vit_b", _BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b.pt",
            "xxh128:fe9252a29f3f4ea53c15a06de471e186",
            None, "micro_sam_vit_b_lm.pt",
            "micro-sam ViT-B finetuned for light microscopy (cells, nuclei)",
        ),
        ModelInfo(
            "vit_l_lm", "vit_l", _BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l.pt",
            "xxh128:017f20677997d628426dec80a8018f9d",
            None, "micro_sam_vit_l_lm.pt",
            "micro-sam ViT-L finetuned for light microscopy (cells, nuclei)",
        ),
        ModelInfo(
            "vit_b_em_organelles", "vit_b", _BIOIMAGEIO + "noisy-ox/1.2/files/vit_b.pt",
            "xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
            None, "micro_sam_vit_b_em_organelles.pt",
            "micro-sam ViT-B finetuned for electron microscopy organelles",
        ),
    ]
}


def available_models() -> list[str]:
    """Names of all known models, for ``load_model`` and the widget's menu."""
    return list(REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; a clear ``KeyError`` listing known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}. Known models: {', '.join(REGISTRY)}; "
            "or pass the path of a checkpoint file."
        ) from None


#: Marks the name of an adapted model made in memory: ``"micro+adapted-1a2b3c4d"``.
ADAPTED_TAG = "+adapted-"


def adapted_record_path(path: str | os.PathLike) -> Path:
    """The JSON record saved next to an adapted model's weights (``model.pt`` -> ``model.json``)."""
    return Path(path).with_suffix(".json")


def base_model_name(model_name: str | None) -> str | None:
    """The model an adapted model was made from; other names are returned unchanged.

    ``"micro+adapted-1a2b3c4d"`` (an adapted model in memory) -> ``"micro"``; the
    path of a saved adapted model -> the ``root_model`` of its JSON record
    (:func:`adapted_record_path`); anything else -> ``model_name``.
    """
    if not isinstance(model_name, str) or model_name in REGISTRY:
        return model_name
    if ADAPTED_TAG in model_name:
        return base_model_name(model_name.split(ADAPTED_TAG, 1)[0])
    record = adapted_record_path(model_name)
    if model_name.endswith((".pt", ".pth")) and record.is_file():
        try:
            root = json.loads(record.read_text()).get("root_model")
        except (OSError, ValueError, AttributeError):
            return model_name
        if isinstance(root, str) and root != model_name:
            return root
    return model_name


def _recommended(model_name: str | None, field_name: str) -> dict[str, Any]:
    # an adapted model keeps the options measured for the model it was made from
    model_name = base_model_name(model_name)
    info = REGISTRY.get(model_name) if isinstance(model_name, str) else None
    return dict(getattr(info, field_name)) if info is not None else {}


def recommended_propagation(model_name: str | None) -> dict[str, Any]:
    """Propagation options recommended for a registry model (empty for others and paths).

    An adapted model gets its base model's (see :func:`base_model_name`).
    """
    return _recommended(model_name, "propagation")


def recommended_everything(model_name: str | None) -> dict[str, Any]:
    """Everything-mode options recommended for a registry model (empty for others and paths).

    An adapted model gets its base model's (see :func:`base_model_name`).
    """
    return _recommended(model_name, "everything")
