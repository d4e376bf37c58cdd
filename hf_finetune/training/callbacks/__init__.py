"""TrainerCallbacks: stage freezing and gradual unfreezing, the train/validation gap monitor, the schedule
recorder, ReduceLROnPlateau for gated groups, and interrupt / non-finite-loss handling. Callbacks act on what the
Trainer hands them and never run the loop."""
