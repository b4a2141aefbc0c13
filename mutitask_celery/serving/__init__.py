"""The server's side of a run: check the tasks, feed the channels from generators as
devices finish them (``producer``), show the progress, and the operator's console
(``console``). Which function handles which channel is ``mutitask_celery.channels``, read
by both sides of a run.
"""
