"""A legacy server script used by the tests: ``server.py COUNT [CHANNEL_SIZE] [CHANNELS]``.

Yields COUNT integers (as str) per channel; prints the returned summary as JSON.
"""

from __future__ import annotations

import json
import sys

from Mutitask.server import BaseConfig, Terminal


def task_generator(start, stop):
    for i in range(start, stop):
        yield str(i)


if __name__ == "__main__":
    count = int(sys.argv[1])
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    channels = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    terminal = Terminal(baseConfig=BaseConfig(deviceNumb=2, ChannelSize=size))
    gens = [task_generator(c * 1000, c * 1000 + count) for c in range(channels)]
    summary = terminal.run(gens if channels > 1 else gens[0])
    print("SUMMARY " + json.dumps({ch: vars(s) for ch, s in summary.channels.items()}), flush=True)
