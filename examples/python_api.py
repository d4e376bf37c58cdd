"""The same run as `python -m hf_finetune`, assembled from the library's pieces.

    python examples/python_api.py --model ../shared/models/efficientnet_lite0 \
        --dataset ../shared/data/hymenoptera --output-dir runs/ants-api

Every default comes from hf_finetune's argument dataclasses; this script only wires the pieces.
"""

from __future__ import annotations

import argparse
import logging

from hf_finetune import (
    DataArguments,
    FinetuneArguments,
    FinetuneTrainingArguments,
    attach_transforms,
    build_trainer,
    classification_report,
    load_model_and_processor,
    load_splits,
)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--model", required=True)
    cli.add_argument("--dataset", required=True)
    cli.add_argument("--output-dir", default="runs/python-api")
    options = cli.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # 1. Data: the dataset's splits, or stratified ones (the test split stays untouched until the end).
    training_args = FinetuneTrainingArguments(output_dir=options.output_dir)
    splits = load_splits(DataArguments(dataset=options.dataset), seed=training_args.seed)

    # 2. Backbone with a new head sized to our labels, and its own image processor.
    model, processor = load_model_and_processor(options.model, splits.id2label)
    attach_transforms(splits, processor, augmentation="light")

    # 3. The recipe: head first, then one stage per epoch, top first, with layer-wise LR decay.
    recipe = FinetuneArguments(strategy="head_then_unfreeze", head_epochs=1, layer_decay=0.7)
    trainer = build_trainer(model, processor, splits, recipe, training_args)
    trainer.train()

    # 4. The held-out test split, once, with the best validation checkpoint.
    output = trainer.predict(splits.test)
    report = classification_report(output.label_ids, output.predictions.argmax(-1), splits.labels)
    trainer.save_model(options.output_dir)
    processor.save_pretrained(options.output_dir)
    print(f"test accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  -> {options.output_dir}")


if __name__ == "__main__":
    main()
