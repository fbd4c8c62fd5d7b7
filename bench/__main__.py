"""`python -m bench`: the benchmark suite (see bench/run.py)."""

from .run import main

main()
