"""Merges result files of `run_all.py` into one, for a grid measured over several sessions or commits.

    python benchmarks/merge_results.py benchmarks/results/benchmark OLD.json NEWER.json ...

Runs are keyed by (method, model, dataset, seed); a later file's run replaces an earlier file's. Each merged run keeps
the name of the file it came from (`source`), and the markdown table says per row which files its runs came from, so
that a row measured on an older commit reads as such. Writes OUTPUT.json, .md and .png like `run_all.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_all import markdown, plot, summarise  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="results path stem (OUTPUT.json, .md, .png)")
    parser.add_argument("inputs", nargs="+", help="run_all.py result files, oldest first")
    options = parser.parse_args(argv)
    runs: dict[tuple, dict] = {}
    newest: dict[tuple[str, int], int] = {}  # (dataset, seed) -> training images in the newest file that ran it
    payloads: list[tuple[str, dict]] = []  # (source: "<file stem> (<date>)", payload)
    for name in options.inputs:
        payload = json.loads(Path(name).read_text())
        source = f"{Path(name).stem} ({payload['date']})"
        payloads.append((source, payload))
        for r in payload["runs"]:
            runs[(r["method"], r["model_name"], r["dataset_name"], r["seed"])] = {**r, "source": source}
            newest[r["dataset_name"], r["seed"]] = r["train_images"]
    # A dataset cut differently (another subset size) in an older file is another dataset: its runs are dropped.
    for key, r in list(runs.items()):
        if r["train_images"] != newest[r["dataset_name"], r["seed"]]:
            print(f"left out: {' / '.join(map(str, key))} from {r['source']}: trained on {r['train_images']} images, "
                  f"the newer runs on {newest[r['dataset_name'], r['seed']]}", file=sys.stderr)
            del runs[key]
    # A file's description of a dataset (subset size, source) holds only if some of that file's runs of it are kept.
    kept = {(r["source"], r["dataset_name"]) for r in runs.values()}
    datasets = {name: info for source, payload in payloads for name, info in payload["datasets"].items()
                if (source, name) in kept}
    merged = {"date": date.today().isoformat(), "machine": payloads[-1][1]["machine"],
              "seeds": sorted({r["seed"] for r in runs.values()}),
              "argv": list(argv if argv is not None else sys.argv[1:]),
              "command": " ".join(["python benchmarks/merge_results.py", *(argv if argv is not None else sys.argv[1:])]),
              "datasets": datasets, "runs": list(runs.values()), "summary": summarise(list(runs.values()))}
    json_path, md_path, png_path = (Path(options.output + ext) for ext in (".json", ".md", ".png"))
    json_path.write_text(json.dumps(merged, indent=2))
    md_path.write_text(markdown(merged))
    plot(merged, png_path)
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
