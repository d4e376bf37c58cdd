"""Layer 5, training (beside probing): the `FinetuneTrainer` with layer-wise LR-decay parameter groups, gated LR
schedules, regularisers, LoRA, the LR range test, and the callbacks that freeze and unfreeze stages, watch the
train/validation gap, record the schedule and handle interrupts."""
