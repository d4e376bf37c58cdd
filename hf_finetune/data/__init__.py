"""Data, the lowest layer above the arguments: load a dataset and make its train / validation / test splits
(`splits`), leave out unreadable images (`check`), decode and cache images (`images`), turn them into model inputs
with the checkpoint's preprocessing and label-safe augmentation (`transforms`), and mix batches (`mixing`)."""
