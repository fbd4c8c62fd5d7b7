"""Sampling: the settings, the MaskGIT decode loop, and the choice among draws."""
