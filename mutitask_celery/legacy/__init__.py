"""The legacy facade: MutiTask's server and client classes.

These modules only translate the old calls (``Terminal``, ``BaseConfig``, ``FuncItem``) into
the package's own objects; the public paths are ``mutitask_celery.server`` / ``.client`` and
``Mutitask.server`` / ``.client``. The server's operator console, whose commands keep
MutiTask's names, is the server's: ``serving.console``.
"""
