"""Running the synthetic engine: on a select(2) loop, in a thread, or as a subprocess."""

from __future__ import annotations

import asyncio
import selectors
import threading

from backends.synthetic.engine import SyntheticEngine
from backends.synthetic.http import Connection
from backends.synthetic.spec import SyntheticConfig


async def serve(cfg: SyntheticConfig, host: str, port: int) -> asyncio.Server:
    """Start listening (port 0: any free port) and return the server; it serves until closed."""
    engine = SyntheticEngine(cfg)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Connection(engine), host, port, backlog=1024)


def run_loop(coro):
    """asyncio.run on a select(2) loop: microsecond timer resolution (see the docstring)."""
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class ServerThread:
    """The synthetic engine on its own event loop in a daemon thread. It shares the caller's GIL:
    prefer `launch` (a subprocess) where the caller's timings matter."""

    def __init__(self, cfg: SyntheticConfig, host: str = "127.0.0.1", port: int = 0):
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self.base_url = ""
        self._thread = threading.Thread(target=run_loop, args=(self._main(cfg, host, port),),
                                        name="synthetic-engine", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._loop is None:
            raise RuntimeError(f"synthetic engine did not start: {self._error}")

    async def _main(self, cfg, host, port) -> None:
        try:
            server = await serve(cfg, host, port)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._stop = asyncio.Event()
        self.base_url = f"http://{host}:{server.sockets[0].getsockname()[1]}/v1"
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        async with server:
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_in_thread(host: str = "127.0.0.1", port: int = 0, **knobs) -> ServerThread:
    """Start in-process; `.base_url` (…/v1) and `.stop()` (or use it as a context manager)."""
    return ServerThread(SyntheticConfig(**knobs), host, port)


def launch(log_path=None, **knobs):
    """The synthetic engine as a subprocess, through the process launcher (free port, health
    wait, early-death check, log, teardown): `with launch(ttft_ms=100) as endpoint: ...`."""
    from harness.launchers.process import ProcessLauncher

    return ProcessLauncher(engine=SyntheticConfig(**knobs), model_path="", log_path=log_path,
                           startup_timeout_s=30)
