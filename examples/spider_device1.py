# The seed's Example 1, device 1, unchanged.
from Mutitask.client import BaseConfig
from Mutitask.client import FuncItem
from Mutitask.client import Terminal
from requests import get


def func1(result):
    print(result)


def func2(task):
    headers = {
    'User-Agent': '******************'
    }
    response = get(url=task, headers=headers)
    if response.status_code == 200:
        # success: send result to save function
        return response.text
    else:
        # error: send fail task to FailChannel automatically
        return None


if __name__ == '__main__':
    # initial this device is ID = 1, get task from TaskChannel1
    base = BaseConfig(deviceID=1, TaskChannelID=1)
    # get function item by base.
    funcitem = FuncItem(baseConfig=base)
    # load save function
    funcitem.load_save_function(func1)
    # load request function
    funcitem.load_task_function(func2)
    # get terminal object and use user define save function, 
    # get more about default function please read Mutitask README.md
    terminal = Terminal(baseConfig=base, funcItem=funcitem)
    terminal.run()
