"""The books in Redis: the ledger of every channel, the dead-letter store, recovery of a dead
device's tasks, publishing task messages, and the Lua steps (``lua/``) that change them atomically.
"""
