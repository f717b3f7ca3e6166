"""The broker's wake-up: an enqueue wakes an idle consumer at once, instead of after its poll."""
import threading
import time
import uuid

import dramatiq


def fresh_broker():
    """A broker of our own: a Worker stopped by another test stays subscribed to the shared
    broker's queue declarations (Dramatiq keeps its middleware) and would take our messages."""
    from actors.broker import make_broker

    return make_broker()


def test_an_idle_worker_is_woken_by_an_enqueue_long_before_its_poll_interval(stack):
    from actors.broker import WAKE_CHANNEL

    broker = fresh_broker()

    handled = threading.Event()
    queue = "test-wake-" + uuid.uuid4().hex[:8]

    @dramatiq.actor(queue_name=queue, actor_name="wake_" + uuid.uuid4().hex[:8], broker=broker)
    def ping():
        handled.set()

    # given a worker whose idle poll is 30 s, idle long enough to have backed off to it
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1, worker_timeout=30_000)
    worker.start()
    try:
        time.sleep(1.0)
        # when a message is enqueued
        sent = time.monotonic()
        ping.send()
        # then it is handled within seconds, not after the 30 s poll
        assert handled.wait(10), "the idle consumer was not woken"
        assert time.monotonic() - sent < 10
        # and the wake-up went through the channel every enqueue publishes on
        assert broker.client.pubsub_numsub(WAKE_CHANNEL)[0][1] >= 1
    finally:
        worker.stop()


def test_a_consumer_polls_when_no_wake_up_arrives(stack):
    """Redis pub/sub lost (or a message enqueued by a plain Dramatiq client): the idle poll
    still finds the message."""
    from dramatiq.brokers.redis import RedisBroker

    broker = fresh_broker()

    handled = threading.Event()
    queue = "test-poll-" + uuid.uuid4().hex[:8]

    @dramatiq.actor(queue_name=queue, actor_name="poll_" + uuid.uuid4().hex[:8], broker=broker)
    def ping():
        handled.set()

    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1, worker_timeout=300)
    worker.start()
    try:
        time.sleep(0.5)
        # when a message is enqueued without a wake-up (the plain broker's enqueue)
        RedisBroker.enqueue(broker, ping.message())
        # then the fallback poll picks it up
        assert handled.wait(10)
    finally:
        worker.stop()
