"""Benchmarks: speed and memory of the tokenizer, MaskGIT training and sampling, ours vs the peer."""
