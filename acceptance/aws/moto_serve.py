"""`moto_server`, tied to the lifetime of the process that started it.

Usage: python moto_serve.py -H 127.0.0.1 -p PORT   (the same arguments as moto_server)

The launcher (acceptance/src/aws.rs) keeps our stdin open as a pipe and never
writes to it. When the launcher exits in any way, including SIGKILL or an
abort that skips destructors, the kernel closes the pipe and we exit too, so
moto can never outlive the test or `local-cloud` that owns it. SIGTERM and
SIGINT are handled by moto itself (they end `run_simple`).

Everything runs in this one process (werkzeug's threaded server, no reloader),
so the pid the launcher holds is the whole server.
"""

import os
import sys
import threading

from moto.server import main


def exit_when_parent_is_gone() -> None:
    # An empty read means EOF: the write end closed, the owner is gone. A raw
    # os.read, not sys.stdin: a daemon thread blocked inside the buffered
    # reader makes interpreter shutdown abort (SIGABRT) when moto exits first.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    # os._exit, not sys.exit: this is not the main thread, and the main thread
    # is blocked in the server loop.
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=exit_when_parent_is_gone, name="parent-watch", daemon=True).start()
    main(sys.argv[1:])
