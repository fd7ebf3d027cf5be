"""fastshm's benchmark suite: the copy path, opening costs, latency and
throughput across processes, queues (messages per second, CPU per message,
round trips), and where releasing the GIL pays, each beside its floor (the
same work in C, measured in the same run) and against the other ways: the
stdlib, posix_ipc, iceoryx2, faster-fifo, pipes and queues.

Run ``python -m benchmarks`` (full, about ten minutes on two cores) or
``python -m benchmarks --quick`` (about a minute and a half); results go to
``benchmarks/results/`` (``benchmarks/results/quick/`` for the quick run).
"""
