"""Parity with the official ``segment-anything`` package (the test oracle).

Identical random weights go into both implementations; embeddings, decoder
outputs and end-to-end masks (through both predictors, from uint8 RGB images,
square and not, with points and boxes) must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.predictor import Predictor
from oracle import make_pair as _make_pair
from oracle import official, rel_err

ARCHS = [
    pytest.param("vit_tiny", id="tiny"),
    pytest.param("vit_b", id="vit_b", marks=pytest.mark.slow),
]


def make_pair(name: str):
    """(ours, theirs) with identical random weights."""
    return _make_pair(name, seed=3)


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    return make_pair(request.param)


def test_image_embedding_matches(pair):
    ours, theirs = pair
    s = ours.img_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.image_encoder(x), theirs.image_encoder(x)
    assert a.shape == b.shape
    assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("prompt", ["points", "box", "box+points", "mask+points"])
def test_decoder_matches(pair, prompt, multimask):
    ours, theirs = pair
    g = torch.Generator().manual_seed(1)
    e = ours.config.embedding_size
    emb = torch.randn(1, ours.config.prompt_embed_dim, e, e, generator=g)
    s = ours.img_size
    points = (torch.rand(2, 3, 2, generator=g) * s, torch.tensor([[1, 0, 1], [1, 1, 0]]))
    boxes = torch.tensor([[10.0, 20.0, s * 0.6, s * 0.7], [0.0, 5.0, s * 0.3, s * 0.9]])
    masks = torch.randn(2, 1, 4 * e, 4 * e, generator=g)
    args = {
        "points": (points, None, None),
        "box": (None, boxes, None),
        "box+points": (points, boxes, None),
        "mask+points": (points, None, masks),
    }[prompt]
    outs = []
    for model in (ours, theirs):
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(*args)
            outs.append(
                model.mask_decoder(
                    emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
                )
            )
    (la, ia), (lb, ib) = outs
    assert la.shape == lb.shape == (2, 3 if multimask else 1, 4 * e, 4 * e)
    assert rel_err(la, lb) <= 1e-4
    assert rel_err(ia, ib) <= 1e-4


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with smooth structure (blobs) and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(h, w)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
        img += rng.uniform(40, 120, 3) * blob[..., None]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


END_TO_END = [
    pytest.param("vit_tiny", 300, 300, id="tiny-square"),
    pytest.param("vit_tiny", 240, 410, id="tiny-wide"),
    pytest.param("vit_tiny", 620, 380, id="tiny-tall"),
    # vit_b on the non-square case only, to keep the suite short
    pytest.param("vit_b", 240, 410, id="vit_b-wide", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("arch", "h", "w"), END_TO_END)
def test_end_to_end_masks_match(arch, h, w):
    """Points and boxes through both predictors give the same masks (row/col vs x/y)."""
    ours, theirs = make_pair(arch)
    sa = official()
    image = _rgb(h, w, seed=h + w)
    their_pred = sa.SamPredictor(theirs)
    their_pred.set_image(image)
    our_pred = Predictor(ours, precision="float32")
    emb = our_pred.embed(image)

    # off-centre prompts, in (row, col) for us and (x, y) for them
    rc = np.array([[0.2 * h, 0.7 * w], [0.65 * h, 0.3 * w]])
    labels = np.array([1, 0])
    box_rc = np.array([0.1 * h, 0.5 * w, 0.45 * h, 0.95 * w])
    cases = [
        ({"points": rc[:1], "labels": labels[:1]}, {"point_coords": rc[:1, ::-1],
                                                    "point_labels": labels[:1]}),
        ({"points": rc, "labels": labels}, {"point_coords": rc[:, ::-1], "point_labels": labels}),
        ({"box": box_rc}, {"box": box_rc[[1, 0, 3, 2]]}),
        ({"points": rc[1:], "labels": [1], "box": box_rc},
         {"point_coords": rc[1:, ::-1], "point_labels": np.array([1]),
          "box": box_rc[[1, 0, 3, 2]]}),
    ]
    for ours_kw, theirs_kw in cases:
        mine = our_pred.predict(emb, **ours_kw)
        masks, scores, low_res = their_pred.predict(**theirs_kw, multimask_output=True)
        assert mine.masks.shape == masks.shape == (3, h, w)
        for k in range(3):
            assert iou(mine.masks[k], masks[k]) >= 0.99, (ours_kw, k)
        np.testing.assert_allclose(mine.scores, scores, rtol=1e-2, atol=1e-2)
        assert mine.logits.shape == low_res.shape
