"""How far the stage probe's lead (best block - top stage) moves with the fold split: one stratified 5-fold split, as
the advisor reads it, against three shuffles of it (`probe_stages(repeats=3)`, the error kept at one split's), per
shared model x dataset x seed, with the decisions each would make (domain shift: > 1 SE and >= 0.01; truncation:
> 2 SE and >= 0.01).

    python benchmarks/stage_probe_repeats.py --datasets hymenoptera eurosat /tmp/exp/data/pneumoniamnist-200

Writes benchmarks/results/stage_probe_repeats.json and .md. Features come from the feature cache (one forward pass per
model, dataset and split seed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_check import asset_parser, assets  # noqa: E402  (a sibling script, not a package)


def check(model_path: Path, dataset: Path, seed: int, repeats: int) -> dict[str, Any]:
    from hf_finetune import DataArguments, load_splits
    from hf_finetune.config.sources import ModelArguments
    from hf_finetune.probing.stage_probe import best_block_gain, probe_stages
    from hf_finetune.recipe.measure import SHIFT_GAIN_SE
    from hf_finetune.recipe.prepare import feature_pass, load_model

    splits = load_splits(DataArguments(dataset=str(dataset)), seed=seed)
    model, processor = load_model(ModelArguments(model=str(model_path)), splits, None, seed)
    features = feature_pass(model, processor, splits, ModelArguments(model=str(model_path)), None, 32, stages=True)
    row: dict[str, Any] = {"model": model_path.name, "dataset": dataset.name, "seed": seed}
    for n in (1, repeats):
        probe = probe_stages(features.stages, len(splits.labels), seed=seed, repeats=n)
        gain = best_block_gain(probe)
        row[f"x{n}"] = {"block": gain.block.name, "diff": gain.diff, "se": gain.se, "shift": gain.beyond(SHIFT_GAIN_SE),
                        "truncate": gain.clear, "seconds": round(probe.seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = asset_parser(__doc__, "stage_probe_repeats", [0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args(argv)
    models, datasets = assets(options)
    out = Path(options.output + ".json")
    rows = json.loads(out.read_text()) if out.exists() else []  # resumes: a finished row is not recomputed
    done = {(r["dataset"], r["model"], r["seed"]) for r in rows}
    for d in datasets:
        for m in models:
            for seed in options.seeds:
                if (d.name, m.name, seed) not in done:
                    rows.append(check(m, d, seed, options.repeats))
                    out.write_text(json.dumps(rows, indent=2))
    n = options.repeats
    lines = [f"`python benchmarks/stage_probe_repeats.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"), "",
             f"| dataset | model | seed | one split: lead (SE) | calls | {n} shuffles: lead (SE) | calls | probe s (1 / {n}) |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(q: dict[str, Any]) -> tuple[str, str]:
        calls = ", ".join(c for c, on in (("shift", q["shift"]), ("truncate", q["truncate"])) if on) or "-"
        return f"{q['block']} {q['diff']:+.4f} ({q['se']:.4f}, {q['diff'] / q['se']:+.1f} SE)", calls

    for r in rows:
        one, many = cell(r["x1"]), cell(r[f"x{n}"])
        lines.append(f"| {r['dataset']} | {r['model']} | {r['seed']} | {one[0]} | {one[1]} | {many[0]} | {many[1]} | "
                     f"{r['x1']['seconds']} / {r[f'x{n}']['seconds']} |")
    Path(options.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
