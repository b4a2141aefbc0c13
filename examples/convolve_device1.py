# The seed's Example 2, device 1, unchanged. (It eval()s the task text as the
# original required; new code should use ast.literal_eval or task_format='native'.)
from Mutitask.client import BaseConfig
from Mutitask.client import FuncItem
from Mutitask.client import Terminal
from scipy.signal import convolve2d
from numpy import array


def func2(task):
    # due to task is string, get matrix can after eval()
    img = eval(task)
    kernel = [[-1, 1, -1], 
              [1, -1, 1], 
              [-1, 1, -1]]
    return convolve2d(img, array(kernel), mode='same')


if __name__ == '__main__':
    # initial this device is ID = 1, get task from TaskChannel1
    base = BaseConfig(deviceID=1, TaskChannelID=1)
    # get function item by base.
    funcitem = FuncItem(baseConfig=base)
    # load convolution function
    funcitem.load_task_function(func2)
    # get terminal object and use default save function, 
    # get more about default function please read README.md
    terminal = Terminal(baseConfig=base, funcItem=funcitem)
    terminal.run()
