"""The broker's wake-up: an enqueue wakes an idle consumer at once, instead of after its poll."""
import contextlib
import threading
import time
import uuid

import dramatiq


@contextlib.contextmanager
def idle_worker(poll_ms: int):
    """A broker of our own with one ping actor on a fresh queue, and a worker idle on it.

    (Not the shared broker: a Worker stopped by another test stays subscribed to that broker's
    queue declarations, since Dramatiq keeps its middleware, and would take our messages.)"""
    from actors.broker import make_broker

    broker = make_broker()
    handled = threading.Event()
    name = uuid.uuid4().hex[:8]

    @dramatiq.actor(queue_name="test-wake-" + name, actor_name="ping_" + name, broker=broker)
    def ping():
        handled.set()

    worker = dramatiq.Worker(broker, queues={ping.queue_name}, worker_threads=1, worker_timeout=poll_ms)
    worker.start()
    try:
        time.sleep(1.0)  # idle: the consumer waits for a wake-up or its poll
        yield broker, ping, handled
    finally:
        worker.stop()


def test_an_idle_worker_is_woken_by_an_enqueue_long_before_its_poll_interval(stack):
    from actors.broker import WAKE_CHANNEL

    # given a worker whose idle poll is 30 s
    with idle_worker(30_000) as (broker, ping, handled):
        # when a message is enqueued
        sent = time.monotonic()
        ping.send()
        # then it is handled within seconds, not after the 30 s poll
        assert handled.wait(10), "the idle consumer was not woken"
        assert time.monotonic() - sent < 10
        # and the wake-up went through the channel every enqueue publishes on
        assert broker.client.pubsub_numsub(WAKE_CHANNEL)[0][1] >= 1


def test_a_consumer_polls_when_no_wake_up_arrives(stack):
    """Redis pub/sub lost (or a message enqueued by a plain Dramatiq client): the idle poll
    still finds the message."""
    from dramatiq.brokers.redis import RedisBroker

    with idle_worker(300) as (broker, ping, handled):
        # when a message is enqueued without a wake-up (the plain broker's enqueue)
        RedisBroker.enqueue(broker, ping.message())
        # then the fallback poll picks it up
        assert handled.wait(10)
