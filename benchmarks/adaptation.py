"""Adaptation (``napari_sam.adapt``) on images the bundled model was not trained on.

For each scenario a 512 x 512 "user image" of nuclei (about 20 px across) is
generated and changed in a way the training generator never produces: an
appearance change of :data:`napari_sam.synthetic.appearance.STRESS_CONDITIONS`
(inverted polarity, gamma, the dtype's full range as contrast limits, ...) or
generator settings held out from training (``nuclei_dim_and_bright``: 8-bit,
dim nuclei next to bright ones). The user labels N random nuclei (N = 3, 10,
30); ``adapt`` trains on about 80 % of them and checks on the rest (its own
no-worse check). Reported, with the base and the adapted model (whichever
``adapt`` chose is marked):

* ``check``: adapt's held-back objects (click / box IoU before -> after);
* ``others``: every other nucleus of the same image (>= 30 px, not labelled),
  one centre click and, separately, its tight box, through the Predictor as
  users get it (tiling, precision, keep the prompted parts);
* ``next image``: every nucleus of a second image of the same scenario
  (another seed): does it carry over to the next image from the microscope?
* the wall-clock time of ``adapt`` (``--minutes`` budget) and its steps.

Run: ``python benchmarks/adaptation.py --threads 2 [--json out.json]
[--scenarios inverted,gamma_2] [--sizes 3,10,30] [--minutes 1.5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

#: scenario -> (generator settings, stress condition or None)
SCENARIOS: dict[str, tuple[dict, str | None]] = {
    "inverted": ({}, "inverted"),
    "gamma_2": ({}, "gamma_2"),
    "window_dtype": ({}, "window_dtype"),
    "dim_and_bright": ({"brightness": (0.05, 1.0), "bit_depth": 8, "photons": 2000.0}, None),
    "saturated_minmax": ({}, "saturated_minmax"),
}

BASE_SETTINGS = {"radius": (7.0, 13.0)}


def user_image(scenario: str, seed: int):
    """``(image, labels, contrast_limits)`` of one 512 x 512 image of ``scenario``."""
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.synthetic.appearance import apply_condition

    params, condition = SCENARIOS[scenario]
    image, labels = nuclei_2d((512, 512), seed=seed, **{**BASE_SETTINGS, **params})
    if condition is None:
        return image, labels, None
    return apply_condition(image, labels, condition, seed=seed)


def pick_objects(labels: np.ndarray, n: int, seed: int, min_area: int = 30) -> np.ndarray:
    """``n`` random object ids with at least ``min_area`` pixels."""
    areas = np.bincount(labels.ravel().astype(np.int64))
    ids = np.flatnonzero(areas >= min_area)
    ids = ids[ids != 0]
    return np.random.default_rng(seed).choice(ids, size=min(n, ids.size), replace=False)


def score_objects(predictor, image, labels, limits, min_area: int = 30) -> dict:
    """Mean click and box IoU of every object >= ``min_area`` px (adapt's own check rule)."""
    from napari_sam.adaptation.check import score
    from napari_sam.adaptation.objects import collect

    areas = np.bincount(labels.ravel().astype(np.int64))
    keep = np.where(areas[labels] >= min_area, labels, 0)
    data = collect(image, keep, limits)
    s = score(predictor, data, range(len(data.objects)))
    return {"point": s.mean_point, "box": s.mean_box, "n": len(s.point)}


def run_one(
    base, scenario: str, n: int, seed: int, minutes: float, steps: int | None, settings=None
) -> dict:
    from napari_sam.adaptation import adapt

    image, labels, limits = user_image(scenario, seed)
    chosen = pick_objects(labels, n, seed + n)
    user = np.where(np.isin(labels, chosen), labels, 0)
    others = np.where(np.isin(labels, chosen), 0, labels)
    t0 = time.perf_counter()
    result = adapt(base, image, user, contrast_limits=limits, time_limit_s=60 * minutes,
                   seed=seed, steps=steps, settings=settings)
    seconds = time.perf_counter() - t0
    r = result.report
    next_image, next_labels, next_limits = user_image(scenario, seed + 1000)
    row = {
        "scenario": scenario,
        "objects": len(chosen),
        "trained": len(r.objects_train),
        "checked": len(r.objects_check),
        "check_before": r.before,
        "check_after": r.after,
        "kept_base": r.kept_base,
        "reason": r.reason,
        "steps": r.steps,
        "stopped_by": r.stopped_by,
        "seconds": round(seconds, 1),
        "seconds_train": r.seconds_train,
        "others_base": score_objects(base, image, others, limits),
        "others_adapted": score_objects(result.adapted, image, others, limits),
        "next_base": score_objects(base, next_image, next_labels, next_limits),
        "next_adapted": score_objects(result.adapted, next_image, next_labels, next_limits),
    }
    for key in ("check_before", "check_after"):
        row[key] = {k: row[key][k] for k in ("point", "box")}
    return row


def format_row(row: dict) -> str:
    def pair(a: dict, b: dict) -> str:
        return f"{a['point']:.2f} -> {b['point']:.2f} | {a['box']:.2f} -> {b['box']:.2f}"

    used = "base" if row["kept_base"] else "adapted"
    return (
        f"| {row['scenario']} | {row['objects']} ({row['trained']}+{row['checked']}) | "
        f"{pair(row['check_before'], row['check_after'])} | "
        f"{pair(row['others_base'], row['others_adapted'])} | "
        f"{pair(row['next_base'], row['next_adapted'])} | {used} | "
        f"{row['steps']} | {row['seconds']:.0f} |"
    )


HEADER = (
    "| scenario | objects (train+check) | check: click \\| box | other nuclei: click \\| box "
    "| next image: click \\| box | used | steps | s |\n"
    "|---|---|---|---|---|---|---|---|"
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="inverted,gamma_2,window_dtype,dim_and_bright")
    parser.add_argument("--sizes", default="3,10,30")
    parser.add_argument("--seeds", default="0", help="comma-separated image seeds [0]")
    parser.add_argument("--minutes", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--settings", default=None, help="AdaptSettings fields as JSON")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from napari_sam.adaptation import AdaptSettings
    from napari_sam.predictor import Predictor

    settings = AdaptSettings(**json.loads(args.settings)) if args.settings else None
    torch.set_num_threads(args.threads)
    base = Predictor("micro", precision=args.precision)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"precision {base.precision}, load average {os.getloadavg()[0]:.1f}")
    print(HEADER, flush=True)
    rows = []
    for scenario in args.scenarios.split(","):
        for n in (int(v) for v in args.sizes.split(",")):
            for seed in (int(v) for v in args.seeds.split(",")):
                row = run_one(base, scenario, n, seed, args.minutes, args.steps, settings)
                row["seed"] = seed
                row["load_average"] = round(os.getloadavg()[0], 1)
                rows.append(row)
                print(format_row(row), flush=True)
    if args.json:
        meta = {"cpu": cpu_name(), "threads": args.threads, "precision": base.precision,
                "minutes": args.minutes, "torch": torch.__version__,
                "settings": (settings or AdaptSettings()).to_dict()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
