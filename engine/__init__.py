"""Stretto's model, training, checkpoints, generation and command line."""
