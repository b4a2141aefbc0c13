"""Import shim: ``from Mutitask.server import ...`` runs on mutitask_celery."""
