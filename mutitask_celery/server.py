"""``from mutitask_celery.server import BaseConfig, Terminal``: the legacy server API's public path.

The code lives in :mod:`mutitask_celery.legacy.server`, beside the rest of the facade.
"""

from mutitask_celery.legacy.server import BaseConfig, Terminal

__all__ = ["BaseConfig", "Terminal"]
