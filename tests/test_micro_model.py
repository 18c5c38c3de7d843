"""The bundled micro model: integrity of the shipped weights, architecture, real quality."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_sam.model import bundled
from napari_sam.model.checkpoint import CheckpointError, infer_config, model_from_state_dict
from napari_sam.model.sam import SamConfig, build_sam

#: Quality floors, a margin below the measured held-out numbers (docs/bundled_model.md).
POINT_IOU_FLOOR = 0.80
BOX_IOU_FLOOR = 0.85
#: Floors under appearance changes the generators never make (the stress sweep's worst
#: nuclei conditions; measured on the test seeds with the stage-5 weights through the
#: Predictor's default zoom into small objects: tiny_48 0.83 / 0.86, inverted 0.85 / 0.89,
#: scale_0.5 0.88 / 0.89, the others >= 0.88 / 0.90; without zoom: tiny_48 0.83 / 0.86,
#: inverted 0.84 / 0.86; stage 4: tiny_48 0.79 / 0.80, inverted 0.77 / 0.82). The box
#: floor is the issue-14 target.
STRESS_POINT_FLOOR = 0.75
STRESS_BOX_FLOOR = 0.80


@pytest.fixture(scope="module")
def micro_model():
    return model_from_state_dict(bundled.read_bundled_state_dict("micro"))


def test_micro_is_bundled_and_small():
    assert bundled.is_bundled("micro")
    assert not bundled.is_bundled("vit_b")
    path = bundled.bundled_path("micro")
    assert path.is_file()
    assert path.stat().st_size <= 25_000_000


def test_bundled_weights_load_strictly_with_weights_only(micro_model):
    state = torch.load(bundled.bundled_path("micro"), map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = build_sam(infer_config(state))
    fresh.load_state_dict(state, strict=True)
    assert micro_model.config.encoder == "micro"
    assert micro_model.config == fresh.config


def test_training_record_ships_next_to_the_weights():
    record = bundled.bundled_record("micro")
    assert record["bundled_sha256"] == bundled.BUNDLED["micro"].sha256
    assert "seed" in record["train_config"]
    assert record["log"], "the training log is missing"
    json.dumps(record)  # plain JSON


def test_unknown_bundled_name_is_a_key_error():
    with pytest.raises(KeyError, match="not bundled"):
        bundled.read_bundled_state_dict("vit_b")


def test_modified_weights_file_is_rejected(tmp_path):
    copy = tmp_path / "micro_sam.pt"
    shutil.copyfile(bundled.bundled_path("micro"), copy)
    assert bundled.read_bundled_state_dict("micro", path=copy)  # intact copy loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified or corrupt") as err:
        bundled.read_bundled_state_dict("micro", path=copy)
    assert str(copy) in str(err.value)


def test_missing_weights_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "weights_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="missing") as err:
        bundled.read_bundled_state_dict("micro")
    assert "micro_sam.pt" in str(err.value)


@pytest.mark.parametrize("patch_size", [4, 8, 16], ids=["stride4", "stride8", "stride16"])
def test_encoder_output_shape_and_config_roundtrip(patch_size):
    config = SamConfig(
        encoder="micro",
        encoder_options={"widths": (8, 16, 16, 32), "depths": (1, 1, 2, 1), "fpn_dim": 16,
                         "attn_depth": 1, "attn_heads": 2},
        img_size=64,
        patch_size=patch_size,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_heads=2,
        decoder_mlp_dim=32,
        iou_head_hidden_dim=16,
    )
    sam = build_sam(config)
    out = sam.image_encoder(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 32, 64 // patch_size, 64 // patch_size)
    assert infer_config(sam.state_dict()) == config


def test_bundled_encoder_output_shape(micro_model):
    cfg = micro_model.config
    s = cfg.img_size
    with torch.inference_mode():
        out = micro_model.image_encoder(torch.zeros(1, 3, s, s))
    assert out.shape == (1, cfg.prompt_embed_dim, s // cfg.patch_size, s // cfg.patch_size)
    assert micro_model.prompt_encoder.mask_input_size == (
        4 * s // cfg.patch_size, 4 * s // cfg.patch_size
    )


def test_segmentation_quality_on_held_out_nuclei(micro_model):
    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.training.validation import evaluate_image

    predictor = Predictor(micro_model, device="cpu", precision="float32")
    point, box = [], []
    for seed in (424242, 434343):  # seeds used neither in training nor in validation
        image, labels = nuclei_2d((256, 256), seed=seed)
        res = evaluate_image(predictor, image, labels)
        point += res["point"]
        box += res["box"]
    assert len(point) >= 20
    assert np.mean(point) >= POINT_IOU_FLOOR, np.mean(point)
    assert np.mean(box) >= BOX_IOU_FLOOR, np.mean(box)


def test_interactive_correction_does_not_hurt(micro_model):
    """A second, positive click in missed foreground keeps or improves the mask."""
    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.training.validation import iou, object_prompts

    predictor = Predictor(micro_model, device="cpu", precision="float32")
    image, labels = nuclei_2d((256, 256), seed=454545)
    ids, points, _ = object_prompts(labels, 30)
    emb = predictor.embed(image)
    first, second = [], []
    for k, p in zip(ids[:12], points[:12]):
        gt = labels == k
        pred = predictor.predict(emb, points=p[None], labels=[1])
        first.append(iou(pred.best_mask, gt))
        missed = np.argwhere(gt & ~pred.best_mask)
        extra = missed[len(missed) // 2] if len(missed) else p
        pred2 = predictor.predict(
            emb,
            points=np.stack([p, extra]),
            labels=[1, 1],
            mask=pred.logits[pred.best_index],
            multimask=False,
        )
        second.append(iou(pred2.best_mask, gt))
    assert np.mean(second) >= np.mean(first) - 0.02


@pytest.mark.parametrize(
    "condition",
    ["inverted", "gamma_2", "gamma_0.5", "saturated_auto", "window_minmax", "low_photons",
     "scale_0.5", "tiny_48"],
)
def test_quality_holds_under_appearance_changes(micro_model, condition):
    """The stress sweep's hardest conditions for nuclei, on seeds used nowhere else."""
    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.synthetic.appearance import STRESS_CONDITIONS, apply_condition
    from napari_sam.training.validation import evaluate_image

    predictor = Predictor(micro_model, device="cpu", precision="float32")
    point, box = [], []
    for seed in (424242, 434343):
        scene = nuclei_2d((256, 256), seed=seed)
        for sample in range(STRESS_CONDITIONS[condition].samples):  # tiny_48: 8 crops
            image, labels, limits = apply_condition(*scene, condition, seed, sample=sample)
            res = evaluate_image(predictor, image, labels, 30, limits)
            point += res["point"]
            box += res["box"]
    assert len(point) >= 20
    assert np.mean(point) >= STRESS_POINT_FLOOR, (condition, np.mean(point))
    assert np.mean(box) >= STRESS_BOX_FLOOR, (condition, np.mean(box))


#: Floor of propagation on small anisotropic stacks (nuclei of radius 4-6 px, 64 px
#: slices, anisotropy 3; docs/bundled_model.md): measured on these seeds (15 nuclei) with
#: micro's options (fade_step 0.6) 0.714 with the stage-5 weights (held-out set: 0.788) and
#: 0.755 with stage 4 (held-out: 0.713); 0.63 before the keyframe score share and the fade
#: step (docs/propagation.md, "Small objects"). One nucleus is ~0.06 of the mean here, so
#: the floor leaves room for a CPU's rounding to flip one stop decision.
SMALL_STACK_PROPAGATION_FLOOR = 0.66


def test_propagation_quality_on_small_anisotropic_stacks():
    """One click per nucleus on its largest slice, propagated with micro's defaults."""
    from napari_sam.predictor import Predictor
    from napari_sam.propagation import propagate, stack_contrast_limits
    from napari_sam.synthetic import nuclei_stack
    from napari_sam.training.validation import object_prompts

    predictor = Predictor("micro", device="cpu", precision="float32")  # the registry's options
    dices = []
    for seed in (464646, 474747, 484848):  # used neither in training, tuning nor validation
        stack, labels = nuclei_stack((16, 64, 64), seed=seed, radius=(4.0, 6.0), anisotropy=3.0)
        limits = stack_contrast_limits(stack)
        seeds, n = {}, 0
        for k in range(1, int(labels.max()) + 1):
            areas = (labels == k).sum((1, 2))
            if areas.max() < 30:
                continue
            n += 1
            z = int(np.argmax(areas))
            _, pts, _ = object_prompts((labels[z] == k).astype(np.uint32), 1)
            emb = predictor.embed(stack[z], contrast_limits=limits)
            mask = predictor.predict(emb, points=pts[:1], labels=[1]).best_mask
            if mask.any():
                seeds[k] = {z: mask}
        out = np.asarray(propagate(stack, seeds, predictor, contrast_limits=limits).mask_or_labels)
        for k in seeds:
            got, obj = out == k, labels == k
            dices.append(2 * (got & obj).sum() / (got.sum() + obj.sum()))
        dices += [0.0] * (n - len(seeds))  # a click that found nothing scores 0
    assert len(dices) >= 12
    assert np.mean(dices) >= SMALL_STACK_PROPAGATION_FLOOR, np.mean(dices)
