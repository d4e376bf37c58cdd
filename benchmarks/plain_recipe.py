"""The comparison point: the stock `transformers.Trainer` with the settings of transformers'
`examples/pytorch/image-classification/run_image_classification.py` (README command): full fine-tune,
AdamW lr 2e-5, 5 epochs, batch 8, RandomResizedCrop + flip for training, Resize + CenterCrop for
evaluation, best checkpoint on validation accuracy.

No hf_finetune code is in its training path. Only the split is shared (`hf_finetune.data.load_splits`,
same seed), so both methods are scored on exactly the same test images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainerCallback, TrainingArguments, set_seed


def make_scorer(test_split: Any, collate: Any, batch_size: int = 32):
    """Returns score(model) -> (accuracy, macro-F1) on an already-transformed split."""

    @torch.no_grad()
    def score(model: torch.nn.Module) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        truth, predicted = [], []
        for start in range(0, len(test_split), batch_size):
            batch = collate([test_split[i] for i in range(start, min(start + batch_size, len(test_split)))])
            logits = model(pixel_values=batch["pixel_values"].to(next(model.parameters()).device)).logits
            truth.extend(batch["labels"].tolist())
            predicted.extend(logits.argmax(-1).tolist())
        model.train(was_training)
        return float(accuracy_score(truth, predicted)), float(f1_score(truth, predicted, average="macro"))

    return score


def run_plain(
    model_path: str, splits: Any, seed: int, output_dir: str, bf16: bool = False, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Fine-tunes `model_path` the transformers-example way; returns the test accuracy and macro-F1.

    `bf16` turns on the Trainer's bf16 mixed precision (GPU); `callbacks` (benchmark measurements) are added to
    the Trainer.
    """
    from torchvision.transforms import CenterCrop, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, ToTensor

    set_seed(seed)
    processor = AutoImageProcessor.from_pretrained(model_path)
    model = AutoModelForImageClassification.from_pretrained(
        model_path, num_labels=len(splits.labels), id2label=splits.id2label,
        label2id={name: i for i, name in splits.id2label.items()}, ignore_mismatched_sizes=True,
    )
    # As in the example: size from the processor, its mean/std, torchvision transforms.
    config = getattr(processor, "data_config", None)
    if config is not None:  # timm processors
        size, mean, std = tuple(config["input_size"][1:]), config["mean"], config["std"]
    else:
        size = (processor.size["shortest_edge"],) * 2 if "shortest_edge" in processor.size else (processor.size["height"], processor.size["width"])
        mean, std = processor.image_mean, processor.image_std
    normalize = Normalize(mean=mean, std=std)
    train_tf = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    eval_tf = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def with_transform(split: Any, transform: Any) -> Any:
        def apply(batch: dict) -> dict:
            return {"pixel_values": [transform(im.convert("RGB")) for im in batch["image"]], "labels": batch["label"]}

        split = split.with_format(None)
        split.set_transform(apply)
        return split

    train, validation, test = (with_transform(s, t) for s, t in ((splits.train, train_tf), (splits.validation, eval_tf), (splits.test, eval_tf)))

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "labels": torch.tensor([e["labels"] for e in examples])}

    def compute_metrics(p: Any) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(p.label_ids, np.argmax(p.predictions, axis=1)))}

    args = TrainingArguments(
        output_dir=output_dir, learning_rate=2e-5, num_train_epochs=5, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
        metric_for_best_model="accuracy", save_total_limit=3, seed=seed, remove_unused_columns=False, report_to="none",
        logging_strategy="epoch", disable_tqdm=True, bf16=bf16,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation, data_collator=collate,
                      compute_metrics=compute_metrics, callbacks=list(callbacks or []))
    trainer.train()
    accuracy, macro_f1 = make_scorer(test, collate)(trainer.model)
    return {"accuracy": accuracy, "macro_f1": macro_f1}
