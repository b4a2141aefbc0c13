"""Tools around the package: the ``mutitask`` command, the demo, a private Redis-compatible
server and the process clean-up that demos, benchmarks and tests share.
"""
