"""What defines a training run: :class:`TrainConfig` (saved with the weights in
the training record) and :func:`micro_config`, the architecture of a micro model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from napari_sam.training.data import DataConfig

__all__ = ["TrainConfig", "micro_config", "small_test_config"]


def micro_config(
    img_size: int = 256,
    patch_size: int = 8,
    embed_dim: int = 64,
    widths: tuple[int, ...] = (24, 48, 96, 160),
    depths: tuple[int, ...] = (1, 2, 2, 2),
    fpn_dim: int = 64,
    attn_depth: int = 1,
    attn_heads: int = 4,
    decoder_mlp_dim: int = 256,
    iou_head_hidden_dim: int = 128,
    mask_in_chans: int = 16,
):
    """The :class:`~napari_sam.model.sam.SamConfig` of a micro model.

    ``decoder_heads`` follows the rule that
    :func:`napari_sam.model.checkpoint.decoder_fields` uses to read it back.
    """
    from napari_sam.model.sam import SamConfig

    return SamConfig(
        encoder="micro",
        encoder_options={
            "widths": tuple(widths),
            "depths": tuple(depths),
            "fpn_dim": fpn_dim,
            "attn_depth": attn_depth,
            "attn_heads": attn_heads,
        },
        img_size=img_size,
        patch_size=patch_size,
        prompt_embed_dim=embed_dim,
        mask_in_chans=mask_in_chans,
        decoder_depth=2,
        decoder_heads=8 if embed_dim >= 256 else max(1, embed_dim // 16),
        decoder_mlp_dim=decoder_mlp_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
        num_multimask_outputs=3,
    )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved with the weights).

    Attributes
    ----------
    model : keyword arguments of :func:`micro_config`
    data : scene sampling, see :class:`~napari_sam.training.data.DataConfig`
    steps : optimizer steps (the schedule's length)
    time_limit_s : wall-clock budget; training stops and the schedule ends by then
    images_per_step : scenes embedded per step
    rounds : interactive rounds per object (>= 1)
    no_point_rounds : rounds without a new click (0, 1 or 2)
    box_prob : probability that an image's first prompt is a jittered box
    mask_prompt_prob : probability of a perturbed-mask + point first prompt
    mask_prompt_box_prob : within those, probability of a perturbed mask + the box
        grown by 10 % around it (what propagation sends) instead of the point
    focal_alpha : foreground weight of the focal loss (negative: unweighted)
    aux_weight : weight of the auxiliary dense loss on the image embedding (a
        training-only 1x1 conv head predicting foreground and object boundaries
        from the embedding; it speeds up learning and is not saved)
    pe_scales : range of the spatial frequencies of the random Fourier position
        encoding (SAM draws them with scale 1); each frequency pair is scaled by
        a log-uniform factor in this range so that small objects are resolved
    attention_init : ``beta`` of
        :func:`~napari_sam.training.initialization.init_decoder_attention`
        (0: SAM's random init)
    resolution_schedule : ``(end_progress, img_size)`` phases: until training
        progress ``end_progress`` (0-1) the model runs at ``img_size`` (see
        :func:`~napari_sam.training.resolution.training_resolution`) on scenes
        scaled to match (same object sizes in pixels, smaller fields of view);
        the last phase should be the model's own input size
    init_weights : start from this checkpoint (a fine-tuning stage: ``model``,
        ``pe_scales`` and ``attention_init`` are then ignored); the record of the
        run that produced it (``training_record.json`` beside it) is kept in
        this run's record as ``previous_stage``
    lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip : optimizer
    seed : seeds numpy (scenes), torch (init, prompts)
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    threads : torch CPU threads (None: leave torch's default)
    checkpoint_every : steps between checkpoints (the latest is always kept)
    log_every : steps between log lines
    val_every : steps between quick validations (0: never)
    """

    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    time_limit_s: float = 3000.0
    images_per_step: int = 2
    rounds: int = 3
    no_point_rounds: int = 1
    box_prob: float = 0.5
    mask_prompt_prob: float = 0.1
    mask_prompt_box_prob: float = 0.0
    focal_alpha: float = -1.0
    aux_weight: float = 1.0
    pe_scales: tuple[float, float] = (1.0, 3.0)
    attention_init: float = 2.0
    resolution_schedule: tuple[tuple[float, int], ...] = ((0.35, 128), (1.0, 256))
    init_weights: str | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.03
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    checkpoint_every: int = 100
    log_every: int = 10
    val_every: int = 200

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = self.data.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if "data" in d and isinstance(d["data"], dict):
            data = dict(d["data"])
            for key in ("base_shape", "other_sides"):
                if key in data:
                    data[key] = tuple(data[key])
            for key in ("kind_weights", "appearance"):
                if key in data:
                    data[key] = dict(data[key])
            d["data"] = DataConfig(**data)
        if "resolution_schedule" in d:
            d["resolution_schedule"] = tuple(
                (float(e), int(s)) for e, s in d["resolution_schedule"]
            )
        if "pe_scales" in d:
            d["pe_scales"] = tuple(float(v) for v in d["pe_scales"])
        return cls(**d)

    def updated(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied (``"data"`` and ``"model"`` merge key by key)."""
        unknown = set(overrides) - set(self.to_dict())
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        d = self.to_dict()
        for key, value in overrides.items():
            if key in ("data", "model") and isinstance(value, dict):
                bad = set(value) - set(d[key]) if key == "data" else set()
                if bad:
                    raise ValueError(f"unknown data settings {sorted(bad)}")
                d[key] = {**d[key], **value}
            else:
                d[key] = value
        return TrainConfig.from_dict(d)


def small_test_config(**overrides) -> TrainConfig:
    """A tiny, fast configuration (for tests and smoke runs)."""
    model = {
        "img_size": 64,
        "patch_size": 8,
        "embed_dim": 32,
        "widths": (8, 16, 16, 32),
        "depths": (1, 1, 1, 1),
        "fpn_dim": 16,
        "attn_depth": 1,
        "attn_heads": 2,
        "decoder_mlp_dim": 32,
        "iou_head_hidden_dim": 16,
        "mask_in_chans": 8,
    }
    data = DataConfig(base_shape=(64, 64), other_shape_prob=0.0, objects_per_image=3)
    cfg = TrainConfig(
        model=model,
        data=data,
        steps=5,
        images_per_step=1,
        rounds=3,
        warmup_steps=1,
        threads=None,
        device="cpu",
        log_every=1,
        val_every=0,
        resolution_schedule=((1.0, 64),),
    )
    return replace(cfg, **overrides)
