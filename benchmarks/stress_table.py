"""Markdown tables of stress sweeps (JSON written by ``micro_model_quality.py --stress[-only]``).

Run: ``python benchmarks/stress_table.py NAME=sweep.json [NAME=sweep.json ...]``; prints,
per validation set, the clean IoU, the mean over conditions and the worst condition
(point / box) for each named sweep, then every condition of the first set of each.
"""

from __future__ import annotations

import json
import sys

from napari_sam.synthetic.appearance import STRESS_CONDITIONS


def _load(arg: str):
    name, _, path = arg.partition("=")
    with open(path) as f:
        return name, json.load(f)["stress"]


def summary_table(sweeps) -> str:
    lines = [
        "| set | model | clean point / box | mean point / box | worst point | worst box | "
        "worst without display windows (point / box) |",
        "|---|---|---|---|---|---|---|",
    ]
    sets = list(sweeps[0][1]["by_set"])
    for s in sets:
        for name, sw in sweeps:
            if s not in sw["by_set"]:
                continue
            rows = {c: r for c, r in sw["by_set"][s].items() if r["n_objects"] > 0}
            clean = rows["clean"]
            wp = min(rows, key=lambda c: rows[c]["point"])
            wb = min(rows, key=lambda c: rows[c]["box"])
            image = {c: r for c, r in rows.items() if STRESS_CONDITIONS[c].window == "auto"}
            wpi = min(image, key=lambda c: image[c]["point"])
            wbi = min(image, key=lambda c: image[c]["box"])
            mean_p = sum(r["point"] for r in rows.values()) / len(rows)
            mean_b = sum(r["box"] for r in rows.values()) / len(rows)
            lines.append(
                f"| `{s}` | {name} | {clean['point']:.3f} / {clean['box']:.3f} | "
                f"{mean_p:.3f} / {mean_b:.3f} | {rows[wp]['point']:.2f} ({wp}) | "
                f"{rows[wb]['box']:.2f} ({wb}) | {image[wpi]['point']:.2f} ({wpi}) / "
                f"{image[wbi]['box']:.2f} ({wbi}) |"
            )
    return "\n".join(lines)


def condition_table(sweeps) -> str:
    conds = list(STRESS_CONDITIONS)
    lines = ["| set | model | " + " | ".join(conds) + " |", "|---|---|" + "---|" * len(conds)]
    for s in sweeps[0][1]["by_set"]:
        for name, sw in sweeps:
            rows = sw["by_set"].get(s)
            if rows is None:
                continue
            cells = [
                f"{rows[c]['point']:.2f}/{rows[c]['box']:.2f}" if c in rows else "-" for c in conds
            ]
            lines.append(f"| `{s}` | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    sweeps = [_load(a) for a in (argv if argv is not None else sys.argv[1:])]
    print(summary_table(sweeps))
    print()
    print(condition_table(sweeps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
