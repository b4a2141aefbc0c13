"""A legacy server script with a resumable run: ``resume_server.py COUNT [--offset K] [--fresh]``.

Yields str(K)..str(K + COUNT - 1) on channel 1 (K = 0 unless --offset) with
``BaseConfig(deviceNumb=2, ChannelSize=20, resume=True)`` (``resume=False`` with --fresh);
prints the summary as JSON.
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
    offset = int(sys.argv[sys.argv.index("--offset") + 1]) if "--offset" in sys.argv else 0
    terminal = Terminal(baseConfig=BaseConfig(deviceNumb=2, ChannelSize=20, resume="--fresh" not in sys.argv))
    summary = terminal.run(task_generator(offset, offset + count))
    print("SUMMARY " + json.dumps({ch: vars(s) for ch, s in summary.channels.items()}), flush=True)
