"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol with aiohttp."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    """The browser's path; its absence is a failure (`make up` installs it), never a skip."""
    path = shutil.which("chromium")
    if path is None:
        raise AssertionError("chromium is not installed; `make up` installs Debian's chromium")
    return path


class Chromium:
    """One browser process with one page; ``responses`` keeps the bodies of watched URLs."""

    def __init__(self, profile: Path, log_path: Path, width: int = 1400, height: int = 1000):
        self.profile = profile
        self.log_path = log_path
        self.size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.watch: Callable[[str], bool] = lambda url: False
        self.responses: list[tuple[str, str]] = []
        self.requested: list[str] = []  # every URL the page asked for
        self._requests: dict[str, str] = {}
        self._fetches: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    chromium_binary(),
                    *FLAGS,
                    f"--user-data-dir={self.profile}",
                    f"--window-size={self.size[0]},{self.size[1]}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        port = await self._devtools_port()
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        await self.send("Network.enable")
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        width, height = self.size
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def _devtools_port(self, timeout: float = 30.0) -> int:
        # Chromium writes the port it picked (for --remote-debugging-port=0) to this file.
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"chromium exited ({self.proc.returncode}):\n{tail}")
            if active.exists() and (lines := active.read_text().split()):
                return int(lines[0])
            await asyncio.sleep(0.1)
        raise AssertionError(f"chromium did not open its DevTools port within {timeout}s")

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            data = message.json()
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            self._on_event(data["method"], data.get("params", {}))
        for future in self.pending.values():
            future.set_exception(AssertionError("chromium closed the DevTools connection"))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requested.append(params["request"]["url"])
        elif method == "Network.responseReceived" and self.watch(params["response"]["url"]):
            self._requests[params["requestId"]] = params["response"]["url"]
        elif method == "Network.loadingFinished" and params["requestId"] in self._requests:
            task = asyncio.create_task(self._keep_body(params["requestId"]))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _keep_body(self, request_id: str) -> None:
        url = self._requests.pop(request_id)
        result = await self.send("Network.getResponseBody", requestId=request_id)
        body = result["body"]
        if result.get("base64Encoded"):
            body = base64.b64decode(body).decode()
        self.responses.append((url, body))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise AssertionError(f"DevTools {method}: {reply['error']}")
        return dict(reply["result"])

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page: timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.25)

    async def screenshot(self, path: Path) -> None:
        """A PNG of the whole page, however tall."""
        height = await self.evaluate("document.documentElement.scrollHeight")
        width = self.size[0]
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=max(int(height), self.size[1]),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
