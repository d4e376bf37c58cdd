"""`python -m hf_finetune card OUTPUT_DIR`: (re)generate a finished run's model card and its plots.

    python -m hf_finetune card runs/my-model [--repo-id user/name] [--license apache-2.0] [--template my_card.md.jinja]

The card is built by `hf_finetune.sharing.model_card.write_model_card` from the run's records; a missing record or
template is reported on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import logging

from hf_finetune.cli.console import refused
from hf_finetune.sharing.model_card import write_model_card

logger = logging.getLogger(__name__)


def card_main(argv: list[str]) -> int:
    """`python -m hf_finetune card OUTPUT_DIR`: (re)generates the model card and its plots."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune card",
        description="(Re)generate OUTPUT_DIR/README.md (the model card) and its plots from a finished run's records.",
    )
    parser.add_argument("output_dir", help="The --output-dir of a finished run.")
    parser.add_argument("--repo-id", default=None, help="Hub repository id the model lives in (usage snippet, model-index).")
    parser.add_argument("--license", default=None, help="Licence id for the metadata (default: the run's or the base model's).")
    parser.add_argument("--template", default=None, help="A Jinja model card template (default: model_card_templates/).")
    args = parser.parse_args(argv)
    try:
        path = write_model_card(args.output_dir, repo_id=args.repo_id, license=args.license, template_path=args.template)
    except (ValueError, FileNotFoundError) as err:
        return refused(err)
    print(f"hf_finetune: model card -> {path}")
    return 0
