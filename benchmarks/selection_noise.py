"""How noisy is the choice between the probe, the fine-tune and their interpolations on a small validation split,
and does a different rule choose better? (issue 18, part 3)

`benchmarks/run_all.py` stores, for every `auto` run that fine-tuned from the probe head, each candidate's
validation logits and test macro-F1 (`<output>.selection/*.npz`). This script replays the selection on random
stratified subsets of the validation split (`--per-class` images of each class, `--draws` times) and reports the
test macro-F1 of the model each rule would have kept, against the best candidate on test (the oracle, which no rule
can know). No model is run: the candidates' scores are fixed, only the evidence for the choice shrinks.

Rules:
    default       hf_finetune's rule (pipeline/select.py): alpha 0.5 (WiSE-FT's untuned weight) unless another
                  candidate leads it by more than one standard error of the paired difference (paired resamples)
    default@A     the same rule around alpha A instead of 0.5
    val-f1        the rule before it: the highest validation macro-F1, ties to the lower validation loss
    val-nll       the lowest validation cross-entropy (a proper score: every image counts, not only argmax flips)
    val-nll-T     the lowest validation cross-entropy after a temperature fitted per candidate on the same images
                  (ranks the candidates' separation, not their calibration)
    bagged-f1     val-f1 on 200 bootstrap resamples of the validation images; the candidate chosen most often
    probe-cv      val-f1, but the probe (alpha 0) scored by its cross-validated macro-F1 over train + validation
                  (5 folds, hundreds of images) instead of on the validation split alone
    alpha=A       a fixed candidate, no evidence used (alpha 0 is the probe refitted on train + validation)

    python benchmarks/selection_noise.py benchmarks/results/benchmark_2026-11-29.selection --per-class 10 20 40
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_finetune.evaluation.calibration import fit_temperature, negative_log_likelihood  # noqa: E402
from hf_finetune.evaluation.intervals import paired_bootstrap_macro_f1  # noqa: E402
from hf_finetune.pipeline.select import ALPHAS, BOOTSTRAP_SAMPLES, MIDDLE_ALPHA, Candidate, _kept, _set_leads  # noqa: E402

Rule = Callable[[np.ndarray, np.ndarray, np.random.Generator], int]


def _f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Macro-F1 over the classes present in `labels` or predicted (scikit-learn's `average="macro"`), by counting:
    the replay scores millions of subsets."""
    predicted = logits.argmax(-1)
    k = logits.shape[-1]
    true_positive = np.bincount(labels[predicted == labels], minlength=k)
    support, guessed = np.bincount(labels, minlength=k), np.bincount(predicted, minlength=k)
    present = (support + guessed) > 0
    f1 = np.divide(2 * true_positive, support + guessed, out=np.zeros(k), where=present)
    return float(f1[present].mean())


def val_f1(logits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> int:
    keys = [(round(_f1(c, labels), 6), -negative_log_likelihood(c, labels)) for c in logits]
    return int(max(range(len(keys)), key=keys.__getitem__))


def val_nll(logits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> int:
    return int(np.argmin([negative_log_likelihood(c, labels) for c in logits]))


def val_nll_t(logits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> int:
    return int(np.argmin([negative_log_likelihood(c, labels, fit_temperature(c, labels)) for c in logits]))


def bagged_f1(logits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, resamples: int = 200) -> int:
    votes = np.zeros(len(logits))
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        votes[val_f1(logits[:, index], labels[index], rng)] += 1
    return int(np.argmax(votes))


def probe_by_cv(cv_macro_f1: float, probe_position: int) -> Rule:
    def rule(logits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> int:
        scores = [cv_macro_f1 if i == probe_position else _f1(c, labels) for i, c in enumerate(logits)]
        return int(np.argmax(scores))

    return rule


def default_rule(logits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, seed: int | None = None,
                 anchor: float = MIDDLE_ALPHA) -> int:
    """hf_finetune's rule (`pipeline/select.py`: `_kept` on paired resamples), replayed; with the run's `seed` on
    the whole validation split it makes the run's own decision. `anchor` replays it around another candidate."""
    alphas = list(ALPHAS)
    candidates = [Candidate(a, _f1(c, labels), negative_log_likelihood(c, labels), 0.0) for a, c in zip(alphas, logits)]
    seed = int(rng.integers(1 << 31)) if seed is None else seed
    resampled = paired_bootstrap_macro_f1(labels, [c.argmax(-1) for c in logits], logits.shape[-1], BOOTSTRAP_SAMPLES, seed)
    _set_leads(candidates, resampled, anchor)
    return alphas.index(_kept(candidates, anchor).alpha)


def fixed(position: int) -> Rule:
    return lambda logits, labels, rng: position


def _subset(labels: np.ndarray, per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])


def replay(store: Path, per_class: list[int | None], draws: int, seed: int) -> dict[str, object]:
    z = np.load(store)
    alphas = [float(a) for a in z["alphas"]]
    test = np.asarray(z["test_macro_f1"], dtype=float)
    test[alphas.index(0.0)] = float(z["probe_refit_test_macro_f1"])  # what alpha 0 saves
    rules: dict[str, Rule] = {"val-f1": val_f1, "val-nll": val_nll, "val-nll-T": val_nll_t, "bagged-f1": bagged_f1}
    if tuple(alphas) == ALPHAS:
        rules["default"] = default_rule
        for anchor in (a for a in ALPHAS if a not in (0.0, MIDDLE_ALPHA)):
            rules[f"default@{anchor:g}"] = lambda lg, lb, rng, anchor=anchor: default_rule(lg, lb, rng, anchor=anchor)
    if "probe_cv_macro_f1" in z.files and np.isfinite(z["probe_cv_macro_f1"]):
        rules["probe-cv"] = probe_by_cv(float(z["probe_cv_macro_f1"]), alphas.index(0.0))
    rules.update({f"alpha={a:g}": fixed(i) for i, a in enumerate(alphas)})
    logits, labels = z["validation_logits"].astype(np.float64), z["validation_labels"]
    result: dict[str, object] = {"run": store.stem, "alphas": alphas, "test_macro_f1": test.tolist(),
                                 "oracle": float(test.max()), "validation_images": int(len(labels)), "by_size": {}}
    smallest_class = int(np.bincount(labels).min())
    run_seed = int(store.stem.rsplit("seed", 1)[1]) if "seed" in store.stem else 0
    for size in (s for s in per_class if s is None or s < smallest_class):
        rng = np.random.default_rng(seed)
        kept: dict[str, list[float]] = {name: [] for name in rules}
        for _ in range(1 if size is None else draws):
            index = _subset(labels, size, rng)
            for name, rule in rules.items():
                if name == "default" and size is None:  # the run's own decision, as pipeline/select.py made it
                    kept[name].append(test[default_rule(logits, labels, rng, seed=run_seed)])
                    continue
                kept[name].append(test[rule(logits[:, index], labels[index], rng)])
        result["by_size"][str(size or "all")] = {name: float(np.mean(v)) for name, v in kept.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", help="folders of .npz files (or .npz files) written by run_all.py")
    parser.add_argument("--per-class", nargs="*", type=int, default=[10, 20, 40],
                        help="validation images per class in each replay (the whole split is always replayed too)")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the results as JSON here")
    options = parser.parse_args(argv)
    logging.getLogger("hf_finetune").setLevel(logging.ERROR)  # temperature fits on tiny subsets warn by design
    files = sorted(f for s in map(Path, options.stores) for f in ([s] if s.is_file() else s.glob("*.npz")))
    sizes: list[int | None] = [None, *options.per_class]
    results = [replay(f, sizes, options.draws, options.seed) for f in files]
    rules = list(results[0]["by_size"]["all"])
    sizes_seen = [size for size in ["all", *map(str, options.per_class)] if any(size in r["by_size"] for r in results)]
    regret = {size: {name: float(np.mean([r["by_size"][size][name] - r["oracle"] for r in results if size in r["by_size"]]))
                     for name in rules} for size in sizes_seen}
    counts = {size: sum(size in r["by_size"] for r in results) for size in sizes_seen}
    print(f"Test macro-F1 of the model each rule keeps minus the best candidate's, mean over {len(results)} runs "
          "(0 is the most a rule can reach)\n")
    print("| rule | " + " | ".join(f"whole split ({counts[s]} runs)" if s == "all" else f"{s} per class ({counts[s]} runs)"
                                  for s in sizes_seen) + " |")
    print("|---|" + "---|" * len(sizes_seen))
    for name in rules:
        print(f"| {name} | " + " | ".join(f"{regret[size][name]:+.4f}" for size in sizes_seen) + " |")
    print()
    for r in results:
        print(r["run"], "test macro-F1 by alpha", [round(v, 4) for v in r["test_macro_f1"]],
              "kept with the whole split:", {n: round(v, 4) for n, v in r["by_size"]["all"].items() if not n.startswith("alpha")})
    if options.output:
        Path(options.output).write_text(json.dumps({"argv": argv or sys.argv[1:], "regret": regret, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
