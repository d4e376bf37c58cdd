"""Layer 9, cli: the only code that parses argv. `main` is `python -m hf_finetune` (training); each sub-command
(`card`, `push`, `demo`, `lr-find`, `probe`) has its own module."""
