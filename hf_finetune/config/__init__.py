"""Layer 1, config: the argument dataclasses (the single source of truth for every default), the values a recipe
field may take, the names of the files a run writes, and the command line as recorded. Imports nothing else of
hf_finetune."""
