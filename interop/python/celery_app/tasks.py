"""The Celery app of the interop matrix's Celery scenario (test_kombu.py).

The broker is INTEROP_URL (lepus, or any broker given to run.sh --url); the
results come back over AMQP too, through the rpc:// backend, so nothing else
needs to run. The worker is started as `celery -A tasks worker` in this
directory.
"""

import os

from celery import Celery

app = Celery("tasks", broker=os.environ["INTEROP_URL"], backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    # Each run uses its own queue so that two runs cannot steal each other's tasks.
    task_default_queue=os.environ.get("INTEROP_CELERY_QUEUE", "interop-celery"),
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
)


@app.task
def add(x, y):
    return x + y


@app.task
def concat(parts):
    return "".join(parts)


@app.task
def fail(why):
    raise ValueError(why)
