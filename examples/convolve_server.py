# The seed's Example 2 (server), unchanged except for where the images are:
# examples/make_images.py makes them (the original read its author's disk).
import os

from Mutitask.server import BaseConfig
from Mutitask.server import Terminal
from PIL import Image
from numpy import array

IMAGES = os.environ.get('MUTITASK_DEMO_IMAGES', os.path.join(os.path.dirname(__file__), 'images'))


def task_generator(name_s, name_e):
    # initial task: get image matrix to get image after convolution.
    for i in range(name_s, name_e + 1):
        img = Image.open(f'{IMAGES}/{i}.jpg').convert('L')
        yield array(img)


if __name__ == '__main__':
    # initial 5 device to finish it, other params set default.
    baseConfig = BaseConfig(deviceNumb=5)
    # get terminal by baseConfig
    terminal = Terminal(baseConfig=baseConfig)
    # posting task get 1 - 200 image matrix, due to send the only 
    # one task mission, task will put in TaskChannel1
    terminal.run(task_generator(1, 200))
