"""How task messages reach the devices' queues, one transport per broker kind.

:func:`mutitask_celery.runtime.transport` chooses, from the settings, and nothing else asks
again:

- :class:`.RedisBroker` (``redis_broker``): Celery's broker is the Redis database that holds
  the books (however the two URLs name it). A books step (a Lua script) pushes a task
  message onto the queue itself, so the books and the queue change together.
- :class:`.KombuBroker` (``kombu_broker``): any other broker kombu speaks (RabbitMQ). A books
  step enters the tasks in a journal (``unsent:<ch>``) instead; the process's one confirmed
  publisher (``publisher``) sends them right after and clears the journal.

A transport knows no ledger: recovery (``books.recovery``), which differs between the two
kinds as well, is chosen beside it.
"""
