"""A legacy device script for the benchmarks: ``noop_device.py ID [noop|sleep|stamp] [CONCURRENCY]``."""

import sys
import time

from Mutitask.client import BaseConfig, FuncItem, Terminal


def noop(task):
    return task


def stamp(task):
    return time.time()  # when the task started here, for the latency benchmark


def sleep(task):
    time.sleep(0.05)
    return task


if __name__ == "__main__":
    kind = sys.argv[2] if len(sys.argv) > 2 else "noop"
    slots = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    base = BaseConfig(deviceID=int(sys.argv[1]), TaskChannelID=1, concurrency=slots)
    funcitem = FuncItem(baseConfig=base)
    funcitem.load_task_function({"sleep": sleep, "stamp": stamp}.get(kind, noop))
    Terminal(baseConfig=base, funcItem=funcitem).run()
