"""fastshm's benchmark suite: the copy path, opening costs, latency and
throughput across processes, against the pure-Python ways.

Run ``python -m benchmarks`` (full, about five minutes on two cores) or
``python -m benchmarks --quick`` (under a minute); results go to
``benchmarks/results/`` (``benchmarks/results/quick/`` for the quick run).
"""
