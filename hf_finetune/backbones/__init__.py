"""Model structure, and nothing else: `loading` turns any image checkpoint into a classifier with a fresh head
(`conversions` for checkpoints without a classifier class, `errors` for messages that say what to pass instead);
`split.split_stages` cuts that classifier into the ordered `stages.StageMap` (embeddings -> blocks -> norm -> head)
by asking its family adapter (`adapters`, one per family, registered like peft's tuners); `targets` says which
parameters get no weight decay and which modules get LoRA adapters; `taps` reads stage features and the head's input;
`truncation` removes the stages above a cut; `tree` holds the module-tree helpers they share. Nothing here builds an
optimizer or freezes anything. Import from the submodules: this file imports nothing, so no import cycle runs
through it.
"""
