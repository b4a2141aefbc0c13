"""``from mutitask_celery.client import BaseConfig, FuncItem, Terminal``: the legacy client API's public path.

The code lives in :mod:`mutitask_celery.legacy.client`, beside the rest of the facade.
"""

from mutitask_celery.legacy.client import BaseConfig, FuncItem, Terminal

__all__ = ["BaseConfig", "FuncItem", "Terminal"]
