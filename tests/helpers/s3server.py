"""moto's S3 server on loopback for tests (the real S3 protocol, spoken to by the unmodified minio client)."""

from __future__ import annotations

from typing import Any

from tests.conftest import free_port as _free_port


class Moto:
    """moto's S3 server in this process, which can be stopped and restarted on the same port.

    moto keeps its data in process memory, so objects survive a restart.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        self._server._server.server_close()  # stop() leaves the socket listening: close it, so connects are refused
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None
