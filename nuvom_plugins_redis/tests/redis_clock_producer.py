"""A producer process with a skewed wall clock (the clock hunt's ``clockshim`` idea):
``time.time`` is shifted by START seconds while the queue connects, then by PUSH seconds
while it pushes; ``time.monotonic`` is untouched, like an NTP step. Each JOB argument is
``<id>`` (ready now) or ``<id>+<secs>`` (``delay_secs``), pushed one by one like ``.delay()``.

Usage: python redis_clock_producer.py URL KEY_PREFIX NAMESPACE START PUSH JOB...
"""

import sys
import time

shift = [float(sys.argv[4])]
_real_time = time.time
time.time = lambda: _real_time() + shift[0]

from nuvom_kernel.backends import BackendContext  # noqa: E402 (after the clock is shifted)
from nuvom_kernel.dispatcher import _available_at  # noqa: E402
from nuvom_kernel.models import Message  # noqa: E402
from nuvom_plugins_redis import RedisJobQueue  # noqa: E402

url, prefix, namespace = sys.argv[1:4]
queue = RedisJobQueue.from_settings({"url": url, "key_prefix": prefix},
                                    BackendContext(namespace=namespace))
shift[0] = float(sys.argv[5])
for job in sys.argv[6:]:
    job_id, _, delay = job.partition("+")
    message = Message(id=job_id, body=b"{}", queue="default", priority=0,
                      available_at=_available_at(float(delay or 0)), created_at=time.time(),
                      task="tests.redis_clock_job")
    assert queue.push([message]) == [True]
queue.close()
