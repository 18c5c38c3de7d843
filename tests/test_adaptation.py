"""napari_sam.adapt: the adapted model differs, round-trips, never replaces a better base.

Small random-weight models (a micro model at 64 px input, the ``vit_tiny``
SAM) and a few steps keep every test fast; the bundled ``micro`` model is
used where the check needs a model that segments.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from napari_sam.adaptation import (
    AdaptationResult,
    AdaptSettings,
    Cancelled,
    SaveError,
    adapt,
    adapted_model_path,
    read_record,
)
from napari_sam.adaptation import training as adaptation_training
from napari_sam.adaptation.check import CheckScores, centre_and_box, verdict
from napari_sam.adaptation.crops import SceneMaker, ViewPlanner
from napari_sam.adaptation.objects import collect, split_objects
from napari_sam.predictor import Predictor
from napari_sam.synthetic import nuclei_2d, nuclei_stack

FAST = AdaptSettings(steps=2, crops_per_step=1, objects_per_crop=3, rounds=2)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict, prefix: str = "") -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


@pytest.fixture(scope="module")
def scene():
    """A 128 x 128 uint16 nuclei image and its labels (about 20 objects)."""
    return nuclei_2d((128, 128), seed=3)


@pytest.fixture
def micro_small():
    """A random-weight micro model at 64 px input (so a 128 px slice is tiled)."""
    from napari_sam.model.sam import build_sam
    from napari_sam.training.loop import micro_config, small_test_config

    torch.manual_seed(0)
    return Predictor(build_sam(micro_config(**small_test_config().model)), precision="float32")


@pytest.fixture(scope="module")
def micro():
    return Predictor("micro", precision="float32")


def test_adapted_model_differs_base_untouched_and_round_trips(micro_small, scene, tmp_path):
    image, labels = scene
    before = _state(micro_small.model)
    result = adapt(micro_small, image, labels, settings=FAST, seed=1)
    assert isinstance(result, AdaptationResult)
    assert _same(before, _state(micro_small.model))  # the input predictor is untouched
    adapted = _state(result.adapted.model)
    assert not _same(before, adapted, "image_encoder.")  # micro: every weight trained
    assert not _same(before, adapted, "mask_decoder.")
    r = result.report
    assert r.trained == "all" and r.steps == 2 and r.root_model == r.base_model
    assert len(r.objects_check) >= 1 and len(r.objects_train) >= 1
    assert set(r.objects_check).isdisjoint(r.objects_train)
    assert result.predictor is (micro_small if r.kept_base else result.adapted)

    path = result.save(tmp_path / "adapted.pt", force=True)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert _same(adapted, loaded)
    record = read_record(path)
    assert record["base_fingerprint"] == r.base_fingerprint
    assert record["objects"]["train"] == [list(k) for k in r.objects_train]
    assert record["report"]["before"] == r.before
    again = Predictor(path, precision="float32", device="cpu")
    emb_a = result.adapted.embed(image)
    emb_b = again.embed(image)
    pa = result.adapted.predict(emb_a, points=[[64, 64]]).logits
    pb = again.predict(emb_b, points=[[64, 64]]).logits
    np.testing.assert_array_equal(pa, pb)
    from napari_sam import load_model

    assert _same(adapted, _state(load_model(path, device="cpu")))
    back = AdaptationResult.load(path, device="cpu", precision="float32")
    assert back.report.objects_train == r.objects_train and not back.report.kept_base


def test_vit_adapts_prompt_encoder_and_decoder_only(tiny_predictor, scene):
    image, labels = scene
    before = _state(tiny_predictor.model)
    calls = []
    result = adapt(
        tiny_predictor, image, labels, settings=FAST, seed=0,
        embeddings=lambda i, z: calls.append((i, z)),  # offers none: the predictor embeds
    )
    adapted = _state(result.adapted.model)
    assert result.report.trained == "prompt_encoder+mask_decoder"
    assert _same(before, adapted, "image_encoder.")
    assert not _same(before, adapted, "mask_decoder.")
    assert _same(before, _state(tiny_predictor.model))
    assert calls and all(c == (0, None) for c in calls)


def test_same_seed_same_weights(micro_small, scene):
    image, labels = scene
    a = adapt(micro_small, image, labels, settings=FAST, seed=5)
    b = adapt(micro_small, image, labels, settings=FAST, seed=5)
    assert a.report.objects_check == b.report.objects_check
    assert _same(_state(a.adapted.model), _state(b.adapted.model))
    c = adapt(micro_small, image, labels, settings=FAST, seed=6)
    assert not _same(_state(a.adapted.model), _state(c.adapted.model))


def test_threads_are_restored(micro_small, scene):
    image, labels = scene
    threads = torch.get_num_threads()
    settings = AdaptSettings(steps=1, crops_per_step=1, rounds=1, threads=1)
    result = adapt(micro_small, image, labels, settings=settings)
    assert result.report.threads == 1
    assert torch.get_num_threads() == threads


def _scramble(model, optimizer, scenes, cfg, gen, rng, features=None) -> float:
    """A training step that ruins the decoder: every mask comes out empty."""
    with torch.no_grad():
        for p in model.mask_decoder.output_hypernetworks_mlps.parameters():
            p.zero_()
        for p in model.mask_decoder.output_upscaling.parameters():
            p.zero_()
    return 1.0


def test_no_worse_rule_keeps_the_base_when_adaptation_fails(micro, scene, monkeypatch):
    image, labels = scene
    monkeypatch.setattr(adaptation_training, "train_step", _scramble)
    result = adapt(micro, image, labels, settings=FAST, seed=0)
    r = result.report
    assert r.before["point"] > 0.5  # the bundled model segments these nuclei
    assert r.after["point"] < r.before["point"]
    assert r.kept_base and "worse" in r.reason
    assert result.predictor is micro
    with pytest.raises(ValueError, match="not better"):
        result.save("never_written.pt")


def test_diverged_training_keeps_the_base(micro, scene, monkeypatch):
    image, labels = scene

    def nan_step(*args, **kwargs):
        return float("nan")

    monkeypatch.setattr(adaptation_training, "train_step", nan_step)
    result = adapt(micro, image, labels, settings=FAST)
    assert result.report.kept_base and "diverged" in result.report.reason
    assert result.report.stopped_by == "diverged"


def test_verdict_needs_a_gain_and_neither_prompt_clearly_worse():
    def s(p, b):
        return CheckScores((p,), (b,), ((0, 1),))

    assert verdict(s(0.5, 0.5), s(0.7, 0.6))[0]
    assert verdict(s(0.89, 0.89), s(0.875, 0.91))[0]  # within the tolerance, mean up
    assert not verdict(s(0.5, 0.5), s(0.9, 0.47))[0]
    assert not verdict(s(0.5, 0.5), s(0.5, 0.5))[0]
    assert not verdict(s(0.5, 0.5), s(0.4, 0.9))[0]
    assert not verdict(s(0.5, 0.5), s(0.9, 0.49), tolerance=0.0)[0]


def test_progress_and_cancel(micro_small, scene):
    image, labels = scene
    seen = []
    adapt(micro_small, image, labels, settings=FAST, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, FAST.steps + 2) and seen[-1] == (FAST.steps + 2, FAST.steps + 2)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    polls = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 2

    before = _state(micro_small.model)
    with pytest.raises(Cancelled, match="cancelled"):
        adapt(micro_small, image, labels, settings=FAST, cancel=cancel)
    assert _same(before, _state(micro_small.model))

    import threading

    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        adapt(micro_small, image, labels, settings=FAST, cancel=event)


def test_stack_labels_give_propagation_style_scenes(micro_small):
    stack, labels = nuclei_stack((12, 80, 80), seed=2, anisotropy=1.5)
    data = collect(stack, labels)
    assert data.is_3d and all(sl.contrast_limits is not None for sl in data.slices)
    limits = {sl.contrast_limits for sl in data.slices}
    assert len(limits) == 1  # one range for the whole stack
    train = list(range(len(data.instances)))
    maker = SceneMaker(data, train, ViewPlanner(micro_small), 64, 4)
    rng = np.random.default_rng(0)
    anchors = [k for k in train if data.neighbours(k, set(train))]
    assert anchors
    scene = None
    for k in anchors:
        scene = maker.scene(k, rng, propagation=True)
        if scene is not None:
            break
    assert scene is not None and scene.prompt_masks is not None
    assert scene.prompt_masks.shape == scene.masks.shape
    settings = AdaptSettings(steps=2, crops_per_step=2, rounds=2, propagation_prob=1.0)
    result = adapt(micro_small, stack, labels, settings=settings)
    assert result.report.instances_train > len(result.report.objects_train)


def test_few_objects_still_run_with_a_weak_check_note(micro_small, scene):
    image, labels = scene
    one = np.where(labels == 3, 3, 0).astype(labels.dtype)
    r = adapt(micro_small, image, one, settings=FAST).report
    assert r.weak_check and r.objects_train == r.objects_check == [(0, 3)]
    assert any("weak" in n for n in r.notes)
    two = np.where(np.isin(labels, [3, 5]), labels, 0)
    r = adapt(micro_small, image, two, settings=FAST).report
    assert r.weak_check and len(r.objects_train) == 1 and len(r.objects_check) == 1


def test_split_holds_back_about_a_fifth():
    rng = np.random.default_rng(0)
    s = split_objects(10, 0.2, rng)
    assert len(s.check) == 2 and len(s.train) == 8 and not s.weak
    assert len(split_objects(3, 0.2, rng).check) == 1
    with pytest.raises(ValueError, match="holdout"):
        split_objects(10, 0.0, rng)


def test_ids_and_tiny_objects(micro_small, scene):
    image, labels = scene
    lab = labels.copy()
    lab[0, 0] = 999  # a one-pixel object: skipped with a note
    data = collect(image, lab)
    assert any("999" in n and "smaller" in n for n in data.notes)
    assert all(o.label != 999 for o in data.objects)
    data = collect(image, lab, ids=[3, 5])
    assert [o.label for o in data.objects] == [3, 5]
    with pytest.raises(ValueError, match=r"ids \[4242\] are not present"):
        collect(image, lab, ids=[3, 4242])
    dots = np.zeros_like(labels)
    dots[10, 10], dots[50, 50] = 1, 2
    with pytest.raises(ValueError, match="smaller than 9 pixels"):
        adapt(micro_small, image, dots, settings=FAST)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda im, lab: (im, lab[:100]), "must cover the image"),
        (lambda im, lab: (im, np.zeros_like(lab)), "no objects"),
        (lambda im, lab: (im, lab.astype(np.float32)), "integer ids"),
        (lambda im, lab: ([im, im], [lab]), "2 images but 1 label"),
        (lambda im, lab: (im, -lab.astype(np.int32)), "negative ids"),
        (lambda im, lab: (np.stack([im] * 3), np.stack([lab] * 3)[None]), "Z, Y, X"),
    ],
)
def test_bad_input_raises_clear_errors(micro_small, scene, make, match):
    image, labels = scene
    im, lab = make(image, labels)
    with pytest.raises(ValueError, match=match):
        adapt(micro_small, im, lab, settings=FAST)


def test_a_model_that_cannot_be_adapted(disk_predictor, scene):
    image, labels = scene
    with pytest.raises(ValueError, match="cannot adapt a DiskPredictor"):
        adapt(disk_predictor, image, labels, settings=FAST)


def test_bad_settings_and_limits(micro_small, scene):
    image, labels = scene
    with pytest.raises(ValueError, match="lr must be"):
        AdaptSettings(lr=0)
    with pytest.raises(ValueError, match="contrast_limits has 3 entries"):
        adapt(micro_small, [image], [labels], contrast_limits=[(0, 1), (0, 1), (0, 1)])
    with pytest.raises(ValueError, match="time_limit_s"):
        adapt(micro_small, image, labels, time_limit_s=0)


def test_save_to_a_full_or_missing_disk_keeps_the_model_in_memory(
    micro_small, scene, tmp_path, monkeypatch
):
    image, labels = scene
    result = adapt(micro_small, image, labels, settings=FAST)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SaveError, match="could not save the adapted model") as err:
        result.save(blocker / "model.pt", force=True)
    assert isinstance(err.value, OSError)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SaveError, match="the disk is full"):
        result.save(tmp_path / "model.pt", force=True)
    assert list(tmp_path.iterdir()) == [blocker]  # nothing half-written
    emb = result.adapted.embed(image)
    assert result.adapted.predict(emb, points=[[64, 64]]).best_mask.shape == image.shape


def test_adapted_models_use_their_base_models_recommendations(micro_small, scene, tmp_path):
    from napari_sam.model.registry import (
        base_model_name,
        recommended_everything,
        recommended_propagation,
    )

    assert base_model_name("micro+adapted-1a2b3c4d") == "micro"
    assert recommended_propagation("micro+adapted-1a2b3c4d") == recommended_propagation("micro")
    image, labels = scene
    micro_small.model_name = "micro"  # pretend it is the bundled model
    result = adapt(micro_small, image, labels, settings=FAST)
    assert result.adapted.model_name.startswith("micro+adapted-")
    assert recommended_everything(result.adapted.model_name) == recommended_everything("micro")
    path = result.save(tmp_path / "mine.pt", force=True)
    assert json.loads(path.with_suffix(".json").read_text())["root_model"] == "micro"
    assert base_model_name(str(path)) == "micro"
    assert recommended_propagation(str(path)) == recommended_propagation("micro")
    assert recommended_propagation(str(tmp_path / "other.pt")) == {}


def test_centre_and_box():
    m = np.zeros((20, 20), bool)
    m[5:10, 3:15] = True
    point, box = centre_and_box(m)
    assert m[int(point[0]), int(point[1])]
    assert box.tolist() == [5, 3, 9, 14]
    ring = np.zeros((21, 21), bool)
    ring[2:19, 2:19] = True
    ring[6:15, 6:15] = False
    point, _ = centre_and_box(ring)
    assert ring[int(point[0]), int(point[1])]


def test_adapted_model_path_is_file_name_safe(tmp_path):
    p = adapted_model_path("my image (1).tif", "/x/y/vit_b.pth", tmp_path)
    assert p == tmp_path / "my_image_1__vit_b.pt"
