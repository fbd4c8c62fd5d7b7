"""Trainers (on accelerate), the token cache, losses and memory footprints."""
