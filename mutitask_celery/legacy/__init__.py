"""The legacy facade: MutiTask's server and client classes and its operator console.

These modules only translate the old calls (``Terminal``, ``BaseConfig``, ``FuncItem``, the
console's commands) into the package's own objects; the public paths are
``mutitask_celery.server`` / ``.client`` and ``Mutitask.server`` / ``.client``.
"""
