"""Tests of the training subpackage: data preparation, prompt simulation, losses, loop, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from napari_sam.training import losses, prompts
from napari_sam.training.data import (
    DataConfig,
    dense_targets,
    prepare_rgb,
    prepare_scene,
    resize_labels,
    select_objects,
)
from napari_sam.training.loop import (
    build_optimizer,
    micro_config,
    small_test_config,
    train,
    train_step,
)


def _disk(size: int, center: tuple[int, int], radius: float) -> np.ndarray:
    rr, cc = np.mgrid[:size, :size]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- prompts
@pytest.mark.parametrize(
    "mask",
    [
        _disk(48, (20, 30), 6),
        np.pad(np.ones((1, 1), bool), ((5, 42), (40, 7))),  # a single pixel
        _disk(48, (24, 24), 12) & ~_disk(48, (24, 24), 8),  # a ring: centre is outside
    ],
    ids=["disk", "single-pixel", "ring"],
)
def test_positive_points_lie_inside_the_mask(mask):
    masks = torch.from_numpy(np.stack([mask] * 64))
    pts, labels = prompts.positive_points(masks, _gen(1))
    assert pts.shape == (64, 1, 2) and labels.shape == (64, 1)
    assert (labels == 1).all()
    x, y = pts[:, 0, 0].long(), pts[:, 0, 1].long()  # (x, y) = (col, row)
    assert mask[y.numpy(), x.numpy()].all()


def test_positive_points_cover_the_mask_uniformly():
    mask = np.zeros((16, 16), bool)
    mask[3, 4] = mask[10, 12] = True
    pts, _ = prompts.positive_points(torch.from_numpy(np.stack([mask] * 400)), _gen(2))
    cols = pts[:, 0, 0].numpy()
    frac = float(np.mean(cols == 4))
    assert 0.4 < frac < 0.6


def test_empty_mask_gives_a_padding_point():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 5, 5] = True
    _, labels = prompts.positive_points(masks, _gen())
    assert labels[:, 0].tolist() == [1, -1]


def test_error_clicks_are_positive_in_missed_and_negative_in_false_foreground():
    target = torch.zeros(3, 32, 32, dtype=torch.bool)
    target[:, 8:20, 8:20] = True
    pred = torch.zeros_like(target)
    pred[0] = target[0]
    pred[0, 8:20, 14:20] = False  # object 0: right half missed
    pred[1] = target[1]
    pred[1, 20:26, 8:20] = True  # object 1: false foreground below
    pred[2] = target[2]  # object 2: perfect
    for seed in range(20):
        pts, labels = prompts.error_clicks(pred, target, _gen(seed))
        x, y = pts[:, 0, 0].long(), pts[:, 0, 1].long()
        assert labels[:, 0].tolist() == [1, 0, -1]
        assert 14 <= x[0] < 20 and 8 <= y[0] < 20  # inside the missed part
        assert 20 <= y[1] < 26 and 8 <= x[1] < 20  # inside the false part


def test_error_clicks_sample_both_kinds_of_error():
    target = torch.zeros(200, 20, 20, dtype=torch.bool)
    target[:, 0:10] = True
    pred = torch.zeros_like(target)
    pred[:, 5:15] = True  # rows 0-4 missed, rows 10-14 false: equal areas
    _, labels = prompts.error_clicks(pred, target, _gen(3))
    frac_pos = float((labels == 1).float().mean())
    assert 0.35 < frac_pos < 0.65


def test_bounding_boxes_are_tight_and_inclusive():
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 3:8, 10:21] = True
    boxes = prompts.bounding_boxes(masks)
    assert boxes[0].tolist() == [10.0, 3.0, 20.0, 7.0]  # x0, y0, x1, y1
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # empty mask


@pytest.mark.parametrize(
    ("side", "expected_std"),
    [(50.0, 5.0), (400.0, None)],
    ids=["10-percent-of-side", "capped-at-20px"],
)
def test_box_jitter_stays_within_bounds(side, expected_std):
    n = 3000
    box = torch.tensor([[300.0, 300.0, 300.0 + side - 1, 300.0 + side - 1]]).repeat(n, 1)
    out = prompts.jitter_boxes(box, (1024, 1024), _gen(4))
    delta = out - box
    assert delta.abs().max() <= prompts.BOX_NOISE_MAX + 1e-4
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    if expected_std is not None:
        std = float(delta.std())
        assert abs(std - expected_std) < 0.1 * expected_std
    else:  # std 40 px before clipping: many corners moved the full 20 px
        assert float((delta.abs() > 19.9).float().mean()) > 0.4


def test_box_jitter_is_clipped_to_the_image():
    box = torch.tensor([[0.0, 0.0, 9.0, 9.0]]).repeat(500, 1)
    out = prompts.jitter_boxes(box, (10, 12), _gen(5))
    assert out.min() >= 0 and out[:, 0::2].max() <= 11 and out[:, 1::2].max() <= 9


def test_perturbed_mask_prompt_is_plus_minus_8_at_low_res():
    masks = torch.from_numpy(np.stack([_disk(64, (30, 30), 10)] * 4))
    out = prompts.perturbed_mask_prompt(masks, (16, 16), (64, 64), _gen(6))
    assert out.shape == (4, 1, 16, 16)
    assert set(torch.unique(out).tolist()) <= {-8.0, 8.0}
    assert ((out > 0).sum(dim=(1, 2, 3)) > 0).all()


def test_margin_boxes_grow_like_propagation_prompts():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 20:25] = True  # 20 rows x 5 cols: margin ceil(0.1 * 20) = 2
    masks[1, 0:3, 60:64] = True  # small, at the corner: minimum margin, clipped
    boxes = prompts.margin_boxes(masks, (64, 64))
    assert boxes[0].tolist() == [18.0, 8.0, 26.0, 31.0]
    assert boxes[1].tolist() == [58.0, 0.0, 63.0, 4.0]


def test_perturbed_masks_stay_close_to_the_original():
    masks = torch.from_numpy(np.stack([_disk(64, (32, 32), 10)] * 16))
    out = prompts.perturb_masks(masks, _gen(9), max_shift=3, max_grow=2)
    assert out.shape == (16, 1, 64, 64)
    iou = losses.mask_iou(out[:, 0] > 0.5, masks)
    assert (iou > 0.4).all() and (iou < 1).any()


# ----------------------------------------------------------------- losses
def test_focal_loss_known_values():
    logits = torch.zeros(1, 2, 2)
    target = torch.ones(1, 2, 2)
    # p = 0.5: ce = log 2, (1 - p_t)^2 = 0.25
    assert losses.focal_loss(logits, target, alpha=-1).item() == pytest.approx(0.25 * math.log(2))
    assert losses.focal_loss(logits, target, alpha=0.25).item() == pytest.approx(
        0.0625 * math.log(2)
    )
    confident = torch.full((1, 2, 2), 12.0)
    assert losses.focal_loss(confident, target).item() < 1e-9
    assert losses.focal_loss(-confident, target).item() > 1.0


def test_dice_loss_known_values():
    target = torch.zeros(4, 4)
    target[:2, :2] = 1
    # p = 0.5 everywhere: inter 2, sum p 8, sum t 4 -> 1 - 5/13
    assert losses.dice_loss(torch.zeros(4, 4), target).item() == pytest.approx(8 / 13)
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert losses.dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # inverted: inter 0, sum p 12, sum t 4 -> 1 - 1/17
    assert losses.dice_loss(-perfect, target).item() == pytest.approx(1 - 1 / 17, abs=1e-6)


def test_mask_loss_is_20_focal_plus_dice_per_mask():
    logits = torch.randn(3, 2, 8, 8, generator=_gen(7))
    target = (torch.rand(3, 2, 8, 8, generator=_gen(8)) > 0.5).float()
    out = losses.mask_loss(logits, target)
    assert out.shape == (3, 2)
    expected = 20 * losses.focal_loss(logits, target) + losses.dice_loss(logits, target)
    torch.testing.assert_close(out, expected)


def test_mask_iou_and_iou_loss():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # 8 px
    b[0, 1:3] = True  # 8 px, 4 shared
    assert losses.mask_iou(a, b).tolist() == pytest.approx([4 / 12, 1.0])  # 2nd: both empty
    logits = torch.where(a, 5.0, -5.0)
    pred_iou = torch.tensor([0.5, 1.0])
    mse = losses.iou_loss(pred_iou, logits, b.float())
    assert mse.tolist() == pytest.approx([(0.5 - 1 / 3) ** 2, 0.0])


# ------------------------------------------------------------------- data
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("uint16", (96, 96)), ("uint8", (120, 80)), ("float32", (64, 100))],
    ids=["uint16-square", "uint8-resized", "float-nonsquare"],
)
def test_training_input_matches_the_predictor(dtype, shape):
    from napari_sam.model.sam import build_sam
    from napari_sam.predictor import Predictor

    rng = np.random.default_rng(0)
    image = (rng.random(shape) * (200 if dtype == "uint8" else 3000)).astype(dtype)
    model = build_sam(micro_config(img_size=64, embed_dim=32, widths=(8, 8, 16, 16)))
    expected, _, resized = Predictor(model, device="cpu", precision="float32").preprocess(image)
    rgb = prepare_rgb(image, model.img_size)
    assert rgb.shape[1:] == resized
    got = model.preprocess(torch.from_numpy(rgb)[None])
    torch.testing.assert_close(got, expected)


def test_resize_labels_nearest_and_padded():
    labels = np.array([[1, 2], [3, 4]], dtype=np.uint32)
    out = resize_labels(labels, (4, 4), 6)
    assert out.shape == (6, 6)
    assert out[:4, :4].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert not out[4:].any() and not out[:, 4:].any()


def test_select_objects_respects_min_area_and_count():
    labels = np.zeros((20, 20), np.uint32)
    labels[:5, :5] = 1  # 25 px
    labels[10:12, 10:12] = 2  # 4 px
    labels[15:20, 0:6] = 3  # 30 px
    rng = np.random.default_rng(0)
    assert sorted(select_objects(labels, 5, rng, min_area=10).tolist()) == [1, 3]
    assert len(select_objects(labels, 1, rng, min_area=1)) == 1


def test_prepare_scene_masks_and_dense_targets():
    labels = np.zeros((64, 64), np.uint32)
    labels[_disk(64, (20, 20), 8)] = 1
    labels[_disk(64, (45, 40), 10)] = 2
    image = (labels > 0).astype(np.float32) * 100 + 10
    cfg = DataConfig(objects_per_image=4)
    scene = prepare_scene(image, labels, 64, cfg, np.random.default_rng(0))
    assert scene.masks.shape == (2, 64, 64)
    assert {int(labels[m].max()) for m in scene.masks} == {1, 2}
    dense = dense_targets(labels)
    assert dense.shape == (2, 64, 64)
    assert (dense[1] <= dense[0]).all() and dense[1].sum() < dense[0].sum()


def test_stack_slices_are_prompted_from_the_neighbouring_slice():
    from napari_sam.training.data import StackSource

    cfg = DataConfig(base_shape=(64, 64), stack_prob=1.0, stack_depth=8, stack_slices=3,
                     objects_per_image=4, min_area=8)
    source = StackSource()
    rng = np.random.default_rng(5)
    scenes = [s for s in (source.next(rng, 64, cfg) for _ in range(6)) if s is not None]
    assert scenes
    for scene in scenes:
        assert scene.prompt_masks.shape == scene.masks.shape
        assert scene.prompt_masks.any(axis=(1, 2)).all()  # every prompt selects something
        # same object on adjacent slices: overlapping or ended (empty target)
        for prompt, target in zip(scene.prompt_masks, scene.masks):
            assert not target.any() or (prompt & target).any() or target.sum() < 20
    assert source.limits is not None and source.limits[0] < source.limits[1]


# ------------------------------------------------------------------- loop
def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    from napari_sam.model.sam import build_sam
    from napari_sam.training.data import scene_batch
    from napari_sam.training.loop import dense_head

    torch.manual_seed(0)
    cfg = small_test_config(lr=3e-3, mask_prompt_prob=0.0, box_prob=0.0)
    model = build_sam(micro_config(**cfg.model))
    head = dense_head(model)
    opt = build_optimizer(model, cfg, extra=head)
    scenes = scene_batch(np.random.default_rng(11), 1, model.img_size, cfg.data)
    losses_seen = []
    for _ in range(5):  # same scene, same prompts (reseeded) every step
        st = train_step(
            model, opt, scenes, cfg, _gen(12), np.random.default_rng(13), head
        )
        losses_seen.append(st.loss)
    assert all(np.isfinite(losses_seen))
    assert losses_seen[-1] < 0.9 * losses_seen[0], losses_seen


def test_train_writes_weights_and_record(tmp_path):
    from napari_sam.model.checkpoint import model_from_state_dict
    from napari_sam.training.loop import file_sha256

    lines = []
    cfg = small_test_config(steps=2, checkpoint_every=1)
    result = train(cfg, tmp_path, log=lines.append)
    weights = tmp_path / "micro_sam_latest.pt"
    record = json.loads((tmp_path / "training_record.json").read_text())
    assert record["steps_done"] == 2 and record["finished"] is True
    assert record["train_config"]["seed"] == 0
    assert record["weights_sha256"] == file_sha256(weights)
    assert len(record["log"]) == 2 and "loss" in record["log"][0]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = model_from_state_dict(state)  # strict load, architecture inferred
    assert model.config == result.model.config
    assert any("step" in line for line in lines)


def test_cli_train_and_export_tiny_run(tmp_path, capsys):
    from napari_sam.training.cli import main

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--preset", "tiny", "--steps", "1"]) == 0
    dest = tmp_path / "weights"
    assert main(["export", str(run), "--dest", str(dest)]) == 0
    record = json.loads((dest / "micro_sam.json").read_text())
    assert record["command"].startswith("python -m napari_sam.training train")
    assert record["bundled_sha256"] in capsys.readouterr().out
    assert (dest / "micro_sam.pt").is_file()


def test_config_overrides_merge_and_reject_unknown_keys():
    cfg = small_test_config().updated({"lr": 5e-4, "data": {"other_shape_prob": 0.5}})
    assert cfg.lr == 5e-4 and cfg.data.other_shape_prob == 0.5
    assert cfg.data.objects_per_image == small_test_config().data.objects_per_image
    with pytest.raises(ValueError, match="unknown training settings"):
        cfg.updated({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="unknown data settings"):
        cfg.updated({"data": {"shape": 3}})
    tuned = cfg.updated({"data": {"appearance": {"tiny_prob": 0.2}}})
    assert tuned.data.appearance == {"tiny_prob": 0.2}
    assert type(tuned).from_dict(tuned.to_dict()).data.appearance == {"tiny_prob": 0.2}
    with pytest.raises(ValueError, match=r"unknown appearance settings.*tiny_prob"):
        cfg.updated({"data": {"appearance": {"tiny": 0.2}}})


def test_fine_tuning_stage_starts_from_weights_and_keeps_the_record(tmp_path):
    first = train(small_test_config(steps=1), tmp_path / "a", log=lambda _: None)
    cfg = small_test_config(
        steps=1,
        init_weights=str(tmp_path / "a" / "micro_sam_latest.pt"),
        mask_prompt_prob=1.0,
        mask_prompt_box_prob=1.0,
    )
    second = train(cfg, tmp_path / "b", log=lambda _: None)
    assert second.model.config == first.model.config
    assert second.record["previous_stage"]["steps_done"] == 1


def test_cli_reports_a_missing_run_folder(tmp_path, capsys):
    from napari_sam.training.cli import main

    assert main(["export", str(tmp_path / "nothing"), "--dest", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """Stopping after a checkpoint and resuming gives what one uninterrupted run gives."""
    from napari_sam.training.loop import train

    data = DataConfig(base_shape=(64, 64), other_shape_prob=0.0, objects_per_image=3,
                      appearance_prob=0.7, stack_prob=0.5, stack_depth=6, stack_slices=2,
                      appearance={"tiny_prob": 0.3, "invert_prob": 0.3})
    cfg = small_test_config(steps=6, checkpoint_every=3, time_limit_s=1e9, data=data)
    whole = train(cfg, tmp_path / "whole", log=lambda line: None)

    class Killed(Exception):
        pass

    def kill_at_step_4(line):
        if line.startswith("step     4"):
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "parts", log=kill_at_step_4)
    resumed = train(cfg, tmp_path / "parts", log=lambda line: None, resume=True)
    assert resumed.record["steps_done"] == 6
    assert [s["start_step"] for s in resumed.record["sessions"]] == [0, 3]
    assert [e["step"] for e in resumed.record["log"]] == [1, 2, 3, 4, 5, 6]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_without_a_saved_state_says_what_to_do(tmp_path):
    from napari_sam.training.loop import train

    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(small_test_config(), tmp_path, log=lambda line: None, resume=True)
