"""The server's side of a run: check the tasks, feed the channels from generators as
devices finish them, show the progress. ``channels`` says which function handles which
channel in this process.
"""
