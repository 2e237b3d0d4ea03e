"""Part 1 of the training, Ping Pong: a producer and a consumer across nodes.

The producer sends numbered pings; the consumer checks that each is the one
it expected. Put them on two nodes, cut the network between them, and watch
pings get lost and the consumer resynchronise: see docs/ping_pong.md, and run
``python -m examples.ping_pong`` for the narrated demo.
"""

from .consumer import expected_value, start_consumer
from .producer import crash, produce, start_producer, stop

__all__ = ["crash", "expected_value", "produce", "start_consumer", "start_producer", "stop"]
