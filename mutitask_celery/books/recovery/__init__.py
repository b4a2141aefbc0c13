"""Recovery: a dead device's tasks given back within seconds, once, and a poison task buried.

It sits beside the ledger and the transport, taking both (neither knows it):

- ``base``: :class:`.Recovery`, the duties devices and the server call, and what they report;
- ``reaper``: :class:`.Reaper`, where the books' Redis is the broker (notes, fenced steps, the sweep);
- ``redeliveries``: :class:`.Redeliveries`, where the broker redelivers by itself (RabbitMQ).

:func:`mutitask_celery.runtime.recovery` chooses, with the transport.
"""
