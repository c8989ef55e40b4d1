"""Serve the web app: bind (127.0.0.1 by default), print the URL, warn when others can reach it."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from fipgraph.errors import ConfigError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); a clear error when the port is taken."""
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"--port {port}: use a number from 1 to 65535 (0 picks a free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({exc}); use 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with --port, "
                          "or --port 0 for any free one") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


class UiServer:
    """A bound, not yet running server: ``run()`` blocks until ``stop()`` (or Ctrl-C)."""

    def __init__(self, store: str | Path = "store", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        import uvicorn

        from fipgraph.ui.app import LOOPBACK_HOSTS, create_app
        from fipgraph.ui.reader import StoreView

        self.view = StoreView(store)  # fails with "not a fipgraph store" before anything listens
        self.loopback = is_loopback(host)
        try:
            self.sock = bind(host, port)
        except BaseException:
            self.view.close()
            raise
        self.host, self.url = host, url_of(self.sock)
        app = create_app(self.view, allowed_hosts=LOOPBACK_HOSTS if self.loopback else ["*"])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    def run(self) -> None:
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.sock.close()
            self.view.close()

    def stop(self) -> None:
        self._server.should_exit = True


def serve(store: str | Path = "store", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the store's web app until Ctrl-C. Opens the store read-only: a build may write meanwhile."""
    server = UiServer(store, host, port)
    if not server.loopback:
        print(f"fipgraph ui: warning: listening on {host}, not loopback: anyone who can reach this machine "
              "can read this store's metrics and run SQL on it. Use --host 127.0.0.1 unless you mean it.",
              file=sys.stderr)
    print(f"fipgraph ui: {server.view.path.resolve()} at {server.url}  (read-only; Ctrl-C to stop)", flush=True)
    server.run()
