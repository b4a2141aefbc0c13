# One image for mutitask's two long-running processes; the command chooses which:
#   a device (the default):   celery -A mutitask_celery worker -n device@%h -Q channel1 -I mytasks ...
#   the operator's web page:  mutitask web --host 0.0.0.0 --port 5566   (with MUTITASK_WEB_PASSWORD set)
# Your task module is not in it: build an image FROM this one that copies it into /opt/mutitask/app
# (on PYTHONPATH; the device's -I names it), or mount it there (compose.yaml does). Nothing secret
# is in it either: every URL, password and setting comes from the environment at run time.
# See docs/deployment.md, "Containers and Kubernetes". tests/surface/test_manifests.py reads this
# file against the code; nothing in the test suite builds or runs it.

# The package in a virtual environment of its own (the path the systemd units use), built apart
# so that no build input stays in the image.
FROM python:3.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/mutitask/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mutitask_celery ./mutitask_celery
COPY Mutitask ./Mutitask
# Flower, tornado and prometheus_client (the web page's) are the package's own dependencies: no extra.
RUN /opt/mutitask/venv/bin/pip install .

FROM python:3.12-slim-bookworm
# tini is PID 1 and hands SIGTERM on: Python started as PID 1 ignores a SIGTERM it has no handler
# for (the web page would wait for SIGKILL), and tini also reaps what a task function leaves behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A user of its own, by number, so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 mutitask \
    && useradd --system --uid 10001 --gid 10001 --home-dir /opt/mutitask --no-create-home \
       --shell /usr/sbin/nologin mutitask \
    && install -d -m 755 /opt/mutitask/app
COPY --from=build /opt/mutitask/venv /opt/mutitask/venv
ENV PATH=/opt/mutitask/venv/bin:$PATH \
    PYTHONPATH=/opt/mutitask/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/mutitask/app
USER 10001:10001
# The web page's port (mutitask web --port); a device listens on nothing.
EXPOSE 5566
# A device leaves cleanly: it hands back what it has not started, lets its running tasks finish
# for MUTITASK_SHUTDOWN_GRACE seconds, then hands their messages back and exits. Give it longer
# than that before SIGKILL. tini passes the signal to the device process only (no -g): a prefork
# pool's children would die of it, and the device ends them itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
# The device of the systemd unit (deploy/systemd/mutitask-device@.service), named after this
# container's host name: every container or pod is a device of its own.
CMD ["celery", "-A", "mutitask_celery", "worker", "-n", "device@%h", "-Q", "channel1", "-I", "mytasks", \
     "--pool", "threads", "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
