"""``nexus dashboard``: optuna-dashboard in a browser, over the cluster's studies.

optuna-dashboard (the Optuna project's web view, the ``dashboard`` extra) reads any Optuna
storage; here it is :meth:`NexusClient.optuna_storage`, the node's ``StorageService`` with the
client's token and TLS, so it runs on any machine that reaches a node (a ``read`` token is
enough to look; the dashboard's own writes, such as notes, need ``submit`` and are refused on a
job's study). The web server listens on loopback only: whoever reaches it acts with the token.
"""

from __future__ import annotations

from socketserver import ThreadingMixIn
from types import ModuleType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

HOST = "127.0.0.1"
DEFAULT_PORT = 8080   # optuna-dashboard's own default
HOME_PATH = "/dashboard"


class MissingExtra(RuntimeError):
    """optuna-dashboard is not installed."""


def require() -> ModuleType:
    """The ``optuna_dashboard`` module.

    Raises:
        MissingExtra: it is not installed, saying how to install it.
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise MissingExtra("nexus dashboard needs optuna-dashboard: pip install 'nexus-node[dashboard]'") from None
    return optuna_dashboard


def study_path(study_id: int) -> str:
    """The page of one study, in optuna-dashboard's URL scheme."""
    return f"{HOME_PATH}/studies/{study_id}"


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    # As optuna-dashboard's own CLI serves it: the page asks for several things at once, and
    # each answer waits on the node.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Not every request on the terminal: the command's own lines say what matters."""


class DashboardServer:
    """optuna-dashboard's WSGI app over ``storage``, served on ``HOST:port``.

    Args:
        storage: The Optuna storage to show (the node's, through the client).
        port: The TCP port; 0 picks a free one (see :attr:`port`).

    Raises:
        MissingExtra: optuna-dashboard is not installed.
        OSError: the port cannot be bound (in use, or privileged).
    """

    def __init__(self, storage: "BaseStorage", port: int = DEFAULT_PORT) -> None:
        self._httpd = make_server(HOST, port, require().wsgi(storage),
                                  server_class=_ThreadedServer, handler_class=_QuietHandler)
        self.port: int = self._httpd.server_port

    def url(self, path: str = HOME_PATH) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def serve_forever(self) -> None:
        """Serves until :meth:`shutdown` (from another thread) or Ctrl-C."""
        self._httpd.serve_forever()

    def shutdown(self) -> None:
        self._httpd.shutdown()

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.server_close()
