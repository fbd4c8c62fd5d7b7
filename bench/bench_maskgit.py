"""MaskGIT training step (samples/s) and sampling (s/clip, tokens/s, FLOP/s), ours vs the peer.

    python bench/bench_maskgit.py [--peer DIR] [--configs demo paper] [--dtypes fp32 bf16] [--json FILE]

The same as `python -m bench --kinds train sample` (see bench/run.py for every option).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import main  # noqa: E402

if __name__ == "__main__":
    main(["--kinds", 'train', 'sample', *sys.argv[1:]])
