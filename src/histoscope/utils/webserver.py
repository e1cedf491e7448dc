"""Running a FastAPI app with uvicorn: in this thread (the commands) or in a daemon thread (tests, benchmarks).

One place for binding (loopback by default, ``port=0`` for a free port), the start-up wait
and the shutdown that both ``histoscope serve`` and ``histoscope view`` use.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["AppThread", "app_in_thread", "run_app", "is_loopback", "bind"]

log = logging.getLogger(__name__)

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``"localhost"``) is reachable from this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port=0``: a free one), not yet listening."""
    family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def _uvicorn_server(app: Any, *, log_level: LogLevel, access_log: bool, configure_logging: bool) -> Any:
    import uvicorn

    kwargs: dict[str, Any] = {} if configure_logging else {"log_config": None}
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="off", timeout_graceful_shutdown=5, **kwargs)
    return uvicorn.Server(config)


class AppThread:
    """A uvicorn server running in a daemon thread (what :func:`app_in_thread` returns).

    Attributes
    ----------
    url : str
        ``http://HOST:PORT``.
    app : fastapi.FastAPI
        The application served.
    server : uvicorn.Server
    thread : threading.Thread
    """

    def __init__(self, server: Any, thread: threading.Thread, url: str, app: Any) -> None:
        self.server, self.thread, self.url, self.app = server, thread, url, app

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving (open connections get up to 5 s to finish) and wait for the thread to end."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "AppThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def app_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, probe: str = "/", log_level: LogLevel = "warning", timeout: float = 30.0, what: str = "server") -> AppThread:
    """Serve ``app`` with uvicorn in a daemon thread; return once ``GET probe`` answers 200.

    Raises
    ------
    OSError
        The address cannot be bound.
    RuntimeError
        The server did not start within ``timeout`` seconds.
    """
    sock = bind(host, port)
    url = url_of(sock)
    server = _uvicorn_server(app, log_level=log_level, access_log=False, configure_logging=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"histoscope {what} {url}", daemon=True)
    thread.start()
    handle = AppThread(server, thread, url, app)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=max(0.1, deadline - time.monotonic())) as r:
                if r.status == 200:
                    return handle
        except (urllib.error.URLError, OSError):
            pass
        if not thread.is_alive() or time.monotonic() > deadline:
            handle.shutdown(timeout=1)
            sock.close()
            raise RuntimeError(f"the {what} at {url} did not start within {timeout} s")
        time.sleep(0.02)


def run_app(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: LogLevel = "warning", access_log: bool = False, on_start: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` with uvicorn in this thread until interrupted (Ctrl-C, SIGTERM).

    ``on_start(url)`` is called once the socket listens (clients may connect at once; they are
    answered when serving starts).

    Raises
    ------
    OSError
        The address cannot be bound.
    """
    sock = bind(host, port)
    sock.listen(2048)  # connections made as soon as on_start announces the URL wait in the backlog
    if on_start is not None:
        on_start(url_of(sock))
    server = _uvicorn_server(app, log_level=log_level, access_log=access_log, configure_logging=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the Ctrl-C it caught
        pass
    finally:
        sock.close()
