"""``from Mutitask.server import BaseConfig, Terminal``, as in MutiTask 2."""

from mutitask_celery.server import BaseConfig, Terminal

__all__ = ["BaseConfig", "Terminal"]
