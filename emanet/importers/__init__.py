"""Checkpoints published by others (the authors' release, mmsegmentation) converted into this
project's format: a model of a named experiment filled strictly, saved with its config."""
