"""A legacy client script used by the tests: ``device.py ID CHANNEL BEHAVIOUR [--native]``.

Behaviours (the task function):
  double   int(task) * 2; None for multiples of 10; ValueError for multiples of 13
  echo     returns the task it received, with its type name: [type, task]
  slow     prints 'START <task> <time>', sleeps $SLOW_SECONDS, returns the task
  tag      returns [os.environ['DEVICE_TAG'], task] after 20 ms
  flaky    None until the file named by $FLAKY_FLAG exists, then the task
  badsave  task as result; a save function that raises for tasks ending in 7
  poison   the task "poison" kills the device process (os._exit); others return the task
  paced    double, after sleeping $PACE_SECONDS (0.01): a run that lasts long enough to disturb
  shaky    raises ConnectionError the first two times it sees a task, then returns [task, tries]
  busy     a CPU-bound loop of $BUSY_SECONDS (holds the GIL as real number crunching does), then the task
  failing  always None (every task fails)
  outage   a task "site..." raises ConnectionError until the file $SITE_UP exists (then returns the task);
           a task "bug..." raises ValueError; others return the task
  hang     prints 'START <task> <time>'; a task starting with "hang" sleeps $HANG_SECONDS (60); returns the task
  gil      prints 'START <task> <time>'; a task starting with "gil" runs sum(range($GIL_N)) (8e8): one C
           call that holds the GIL throughout, so no other thread of the device runs meanwhile (not
           its heartbeat either); others sleep $SLOW_SECONDS (0.05); returns the task
  hold     prints 'START <task> <time>'; a task starting with "hold" waits until the file $RELEASE_FILE exists
  coop     prints 'START <task> <time>'; runs $COOP_SECONDS (60) unless its channel is cancelled
           (mutitask_celery.cancelled()), then returns [task, "stopped early"]; else [task, "ran"]
Options: --native (task_format='native'), --retries N (retries=N, retry_backoff=0.01),
--concurrency N (tasks at once, threads), --time-limit S (time_limit=S), --save-file (a save
function that appends each result as a line to $SAVE_FILE; it prints 'SAVING <result> <time>'
first, and sleeps $SAVE_SECONDS (2) on a result starting with "slowsave").
"""

from __future__ import annotations

import os
import sys
import threading
import time

from Mutitask.client import BaseConfig, FuncItem, Terminal

_say_lock = threading.Lock()


def say(line: str) -> None:
    """Print one whole line. print() writes the text and its newline apart, so two task
    threads printing at once could join their lines ("START t1 <time>START t3 <time>") and a
    test reading them would miss a start."""
    with _say_lock:
        print(line, flush=True)


def double(task):
    n = int(task)
    if n % 10 == 0:
        return None
    if n % 13 == 0:
        raise ValueError(f"unlucky {n}")
    return n * 2


def echo(task):
    return [type(task).__name__, task if isinstance(task, str) else repr(task)]


def slow(task):
    say(f"START {task} {time.time()!r}")
    time.sleep(float(os.environ.get("SLOW_SECONDS", "1")))
    return task


def tag(task):
    time.sleep(0.02)
    return [os.environ.get("DEVICE_TAG", "?"), task]


def flaky(task):
    return task if os.path.exists(os.environ["FLAKY_FLAG"]) else None


def poison(task):
    if task == "poison":
        os._exit(3)  # kills the whole device, as a segfault would
    time.sleep(float(os.environ.get("TASK_SECONDS", "0.05")))
    return task


def busy(task):
    deadline = time.monotonic() + float(os.environ.get("BUSY_SECONDS", "10"))
    n = 0
    while time.monotonic() < deadline:
        n += sum(i * i for i in range(1000))
    return task


def failing(task):
    return None


def outage(task):
    if task.startswith("site") and not os.path.exists(os.environ["SITE_UP"]):
        raise ConnectionError(f"cannot reach the site for {task}")
    if task.startswith("bug"):
        raise ValueError(f"bad page in {task}")
    return task


def hang(task):
    say(f"START {task} {time.time()!r}")
    if task.startswith("hang"):
        time.sleep(float(os.environ.get("HANG_SECONDS", "60")))
    return task


def hold(task):
    say(f"START {task} {time.time()!r}")
    while task.startswith("hold") and not os.path.exists(os.environ["RELEASE_FILE"]):
        time.sleep(0.05)  # a task that hangs until the test lets it go
    return task


def coop(task):
    """A long task that stops early once its channel is cancelled (it polls cancelled())."""
    import mutitask_celery

    say(f"START {task} {time.time()!r}")
    deadline = time.monotonic() + float(os.environ.get("COOP_SECONDS", "60"))
    while time.monotonic() < deadline:
        if mutitask_celery.cancelled():
            return [task, "stopped early"]
        time.sleep(0.05)
    return [task, "ran"]


def paced(task):
    time.sleep(float(os.environ.get("PACE_SECONDS", "0.01")))
    return double(task)


_tries: dict[str, int] = {}


def shaky(task):
    _tries[task] = _tries.get(task, 0) + 1
    if _tries[task] <= 2:
        raise ConnectionError(f"try {_tries[task]} of {task} failed")
    return [task, _tries[task]]


def gil(task):
    say(f"START {task} {time.time()!r}")
    if task.startswith("gil"):
        sum(range(int(float(os.environ.get("GIL_N", "8e8")))))
    else:
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0.05")))
    return task


def save_to_file(result):
    say(f"SAVING {result} {time.time()!r}")
    if str(result).startswith("slowsave"):
        time.sleep(float(os.environ.get("SAVE_SECONDS", "2")))
    fd = os.open(os.environ["SAVE_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{result}\n".encode())  # one write: lines from several devices never interleave
    finally:
        os.close(fd)


def bad_save(result):
    if str(result).endswith("7"):
        raise OSError(f"disk full for {result}")
    say(f"saved {result}")


BEHAVIOURS = {
    "double": double,
    "echo": echo,
    "slow": slow,
    "tag": tag,
    "flaky": flaky,
    "badsave": str,
    "poison": poison,
    "shaky": shaky,
    "paced": paced,
    "busy": busy,
    "failing": failing,
    "outage": outage,
    "hang": hang,
    "gil": gil,
    "hold": hold,
    "coop": coop,
}

if __name__ == "__main__":
    device_id, channel, behaviour = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    native = "--native" in sys.argv[4:]
    retries = int(sys.argv[sys.argv.index("--retries") + 1]) if "--retries" in sys.argv else 0
    concurrency = int(sys.argv[sys.argv.index("--concurrency") + 1]) if "--concurrency" in sys.argv else 1
    time_limit = float(sys.argv[sys.argv.index("--time-limit") + 1]) if "--time-limit" in sys.argv else None
    base = BaseConfig(
        deviceID=device_id,
        TaskChannelID=channel,
        task_format="native" if native else "text",
        retries=retries,
        retry_backoff=0.01,
        concurrency=concurrency,
        time_limit=time_limit,
    )
    funcitem = FuncItem(baseConfig=base)
    funcitem.load_task_function(BEHAVIOURS[behaviour])
    if behaviour == "badsave":
        funcitem.load_save_function(bad_save)
    if "--save-file" in sys.argv:
        funcitem.load_save_function(save_to_file)
    Terminal(baseConfig=base, funcItem=funcitem).run()
