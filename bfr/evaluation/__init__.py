"""Evaluation (quality on a fixed synthetic LFW test set) and benchmarking (speed, memory, precision).

    >>> from bfr.evaluation import run_eval, run_bench
    >>> run_eval("runs/eval", n_images=64)     # results.md, results.json, samples_*.png, tradeoff.png
    >>> run_bench("runs/bench")                # bench.md, bench.json, bench.png
"""

from bfr.evaluation.bench import run_bench
from bfr.evaluation.eval import TestSet, build_test_set, load_or_build_test_set, run_eval

__all__ = ["TestSet", "build_test_set", "load_or_build_test_set", "run_bench", "run_eval"]
