"""``from Mutitask.client import BaseConfig, FuncItem, Terminal``, as in MutiTask 2."""

from mutitask_celery.client import BaseConfig, FuncItem, Terminal

__all__ = ["BaseConfig", "FuncItem", "Terminal"]
