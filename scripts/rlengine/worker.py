"""Worker transport: `python -m rlengine.worker`, JSON Lines over stdin/stdout.

One request per line in, one reply per line out, in order. The reply stream owns the
original fd 1; fd 1 itself and sys.stdout are pointed at stderr so that anything a
library prints (Python or C level) cannot corrupt it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys


def die_with_host() -> None:
    """Ask the kernel for SIGKILL when the host dies (PR_SET_PDEATHSIG), so that a
    host killed by SIGKILL leaves no worker holding memory or mapped weights.

    The host passes its pid in RLHOST_PARENT_PID (host/proc.h); a worker whose
    parent is already another process (the host died before this ran) exits now.
    Files it leaves in /dev/shm are removed by the next engine start (torch_io).
    """
    want = os.environ.pop("RLHOST_PARENT_PID", "")  # not for our own children
    if not want.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(want):
        os._exit(1)


def main() -> int:
    die_with_host()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ctrl-C reaches the whole process group, and a service manager or batch scheduler
    # sends SIGTERM to every process of the job (systemd's control group, SLURM's job
    # step); the host decides how to stop (it finishes the step, checkpoints, then
    # closes our stdin), so neither may kill a generator mid-request. A worker that
    # must go gets end of input, then SIGKILL from proc_close, or dies with its host
    # (die_with_host).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("RLENGINE_LOG", "WARNING"),
                        format="rlengine[%(process)d]: %(levelname)s %(message)s")
    from .dispatch import error_reply  # after the redirection: imports may print
    from .host import call, close_all, encode

    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        try:
            reply = call(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            reply = encode(error_reply(None, "config", f"request is not valid UTF-8: {exc}"))
        try:
            replies.write(reply.encode("utf-8") + b"\n")
            replies.flush()
        except BrokenPipeError:  # the host is gone: nobody to answer
            logging.getLogger("rlengine").warning("reply pipe closed; exiting")
            close_all()
            return 1
    close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
