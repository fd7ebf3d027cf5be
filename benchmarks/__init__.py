"""fastshm's benchmark suite: the copy path, opening costs, latency and
throughput across processes, queues (messages per second, CPU per message,
round trips), channels (publish/subscribe: frames, large messages copied
and in place, fan-out, round trip, an idle receive), fastshm.aio (1000
awaiting tasks idle, the wake-up of an awaiting task, a ping-pong between
two asyncio processes), and where releasing the GIL pays, each beside its
floor (the same work in C, measured in the same run) and against the other
ways: the stdlib, posix_ipc, iceoryx2, faster-fifo, pipes and queues, a
thread per waiter, an event loop woken through a socket, asyncio streams
and zmq.asyncio (and, where uvloop is installed, the same on its loop).

Run ``python -m benchmarks`` (full, about twelve minutes on two cores) or
``python -m benchmarks --quick`` (about a minute and a half to two); results go to
``benchmarks/results/`` (``benchmarks/results/quick/`` for the quick run).
"""
