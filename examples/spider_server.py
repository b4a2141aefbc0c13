# The seed's Example 1 (server), unchanged except for the site it asks:
# a local web site (examples/local_site.py) stands in for the original's.
import os

from Mutitask.server import BaseConfig
from Mutitask.server import Terminal

SITE = os.environ.get('MUTITASK_DEMO_SITE', 'http://127.0.0.1:8000')


def task_generator(ps, pe):
    # initial task: get url response text.
    for i in range(ps, pe + 1):
        yield f'{SITE}/free/inha/{i}/'


if __name__ == '__main__':
    # initial 5 device to finish it, other params set default.
    baseConfig = BaseConfig(deviceNumb=5)
    # get terminal by baseConfig
    terminal = Terminal(baseConfig=baseConfig)
    # posting task get url from 1 to 200
    terminal.run([task_generator(1, 200)])
