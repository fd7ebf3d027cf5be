"""fastshm for asyncio: the same objects, whose calls that can block are
coroutines, and none of which holds a thread while it waits.

``fastshm.aio.Segment``, ``Queue``, ``ObjectQueue``, ``Publisher`` and
``Subscriber`` take the same arguments as their synchronous twins and have
the same attributes and plain methods (``store``, ``load``, ``put_nowait``,
``get_nowait``, ...); ``await seg.wait()``, ``await q.get()``, ``await
q.put(x)``, ``await sub.receive()``, ``await pub.publish(x)`` and ``async
with pub.loan(n) as buf`` wait without blocking the event loop.
``from_sync(obj)`` makes one from a synchronous object, sharing its handle;
``.sync`` is the synchronous object.

A call that finds what it waits for returns at once, without a thread hop
or a system call.  One that must wait counts itself among the object's
sleepers and reads the object's wake-up word.  On Linux 6.7 and later the
task's event loop then sleeps on the word itself: each loop has an io_uring
of futex waits whose descriptor it watches like a socket, and a writer's
wake-up wakes the loop directly.  Elsewhere (and for polled words) the word
goes to a helper thread, which sleeps on the words of every waiting task of
the process at once (futex_waitv on Linux 5.16 and later; polled elsewhere)
and wakes the task's loop when its word changes; one helper thread serves
127 waiting objects, more get one more thread per 127.  Either way the task
then looks again: only the task takes messages, so a task cancelled while
it waits has taken nothing.
"""

from .object_queue import ObjectQueue
from .publisher import Publisher
from .queue import Queue
from .segment import Segment
from .subscriber import Subscriber
from .wait_any import wait_any

__all__ = ["Segment", "Queue", "ObjectQueue", "Publisher", "Subscriber", "wait_any"]
