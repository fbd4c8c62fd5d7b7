"""Judging and measuring models: the Shapes judge, metrics, paired comparisons."""
