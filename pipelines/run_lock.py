"""One writer per pipeline root: runs (and `gc`) on the same RUN_DIR/PIPELINE take its lock first.

An advisory `flock` on RUN_DIR/PIPELINE/.latentforge.lock: the kernel releases it when the holder exits in any way
(SIGKILL included), so a killed run never leaves a stale lock behind. The file records who holds it (pid, host,
command, since when) for the message the second run prints.
"""
import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator, Optional

LOCK_FILE = ".latentforge.lock"
_POLL_S = 1.0


class PipelineBusy(RuntimeError):
    """Another process holds the pipeline root's lock."""


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, since {started})"


@contextlib.contextmanager
def pipeline_lock(root: str, wait_s: Optional[float] = 0.0, command: str = "latentforge") -> Iterator[str]:
    """Holds the lock of pipeline root `root` for the block. wait_s: 0 fails at once when it is held (PipelineBusy),
    N waits up to N seconds, None waits for as long as it takes. `command`: what the holder is, for the others."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_FILE)
    with open(path, "a+") as f:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s else ""
                    raise PipelineBusy(f"{root} is in use by {_holder(path)}{waited}; this run did nothing. Let it "
                                       "finish, pass --if-busy wait, or give this run its own --run-dir or "
                                       "--pipeline-name") from None
                if not announced:
                    print(f"latentforge: {root} is in use by {_holder(path)}; waiting for it", file=sys.stderr,
                          flush=True)
                    announced = True
                time.sleep(_POLL_S)
        try:
            f.seek(0)
            f.truncate()
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                       "command": command[:300]}, f)
            f.flush()
            yield path
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
