"""`python -m hf_finetune lr-find ...`: the LR range test alone, with the training flags of a run."""

from __future__ import annotations

from hf_finetune.cli.console import refused
from hf_finetune.cli.main import parse_args
from hf_finetune.pipeline.assemble import prepare_run
from hf_finetune.training.lr_find import lr_range_test, save_lr_find


def main(argv: list[str]) -> int:
    """`python -m hf_finetune lr-find --model ... --dataset ... [--output-dir ...]`: sweep, plot, print the suggestion."""
    try:
        model_args, data_args, finetune_args, training_args, share_args = parse_args(argv)
        prepared = prepare_run(model_args, data_args, finetune_args, training_args, share_args=share_args)
        result = lr_range_test(prepared.trainer)
    except ValueError as err:
        return refused(err)
    json_path, plot_path = save_lr_find(result, training_args.output_dir)
    print(f"hf_finetune lr-find: suggested --learning-rate {result.suggestion:.2e} -> {plot_path}, {json_path}")
    return 0
