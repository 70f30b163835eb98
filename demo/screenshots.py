"""Screenshots of the running demo with headless Chromium over the DevTools protocol (docs/img/*.png).

``python -m demo.screenshots --url http://127.0.0.1:8080 --project 1 --view 1 --task 7 --password ...``
logs in through Label Studio's form, then captures the Data Manager tab sorted by priority (scrolled
down ``--scroll-rows`` rows) and a task's labelling page. Needs ``chromium`` on PATH (Debian:
``apt-get install chromium``); writes only under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

logger = logging.getLogger(__name__)


class Browser:
    """One Chromium page driven through the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        return result.get("result", {}).get("value")

    async def goto(self, url: str, *, settle: float = 4.0) -> None:
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(settle)

    async def wait_for(self, js_condition: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.eval(f"Boolean({js_condition})"):
                return True
            await asyncio.sleep(0.5)
        return False

    async def screenshot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        logger.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)


async def _run(args: argparse.Namespace, ws_url: str) -> None:
    async with websockets.connect(ws_url, max_size=50_000_000) as ws:
        page = Browser(ws)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.goto(f"{args.url}/user/login/")
        await page.eval(
            "(() => {"
            f"document.querySelector('input[name=email]').value = {json.dumps(args.username)};"
            f"document.querySelector('input[name=password]').value = {json.dumps(args.password)};"
            "document.querySelector('form').submit(); return true; })()"
        )
        await asyncio.sleep(4)
        await page.goto(f"{args.url}/projects/{args.project}/data?tab={args.view}", settle=3)
        await page.wait_for(
            "document.querySelectorAll('.dm-table__row-wrapper, [class*=row-wrapper]').length > 0"
        )
        await asyncio.sleep(3)
        # Scroll the task table (the largest scrollable element) down by --scroll-rows rows, a page at a time
        # (the list loads its rows lazily): the top of a ranking can be a run of ties, lower rows show how
        # the scores and grades spread.
        scroll_js = (
            "(() => { const row = document.querySelector('.dm-table__row-wrapper, [class*=row-wrapper]');"
            " const h = row ? row.getBoundingClientRect().height : 60;"
            " const boxes = [...document.querySelectorAll('*')].filter("
            "e => e.scrollHeight > e.clientHeight + 100 && getComputedStyle(e).overflowY !== 'visible');"
            " boxes.sort((a, b) => b.scrollHeight - a.scrollHeight);"
            " if (boxes.length) boxes[0].scrollTop = ROWS * h; return boxes.length; })()"
        )
        for rows in range(min(20, args.scroll_rows), args.scroll_rows + 20, 20):
            await page.eval(scroll_js.replace("ROWS", str(min(rows, args.scroll_rows))))
            await asyncio.sleep(1.5)
        await page.screenshot(args.out / "data-manager-sorted.png")
        await page.goto(f"{args.url}/projects/{args.project}/data?tab={args.view}&task={args.task}", settle=4)
        await page.wait_for("document.querySelector('canvas, img[class*=image]')")
        await asyncio.sleep(4)
        # Open the backend's prediction (its tab is labelled with the model version, "v0001-...") and
        # select its first region so that the details panel shows the region's noise note (meta text).
        await page.eval(
            "(() => { const leaf = [...document.querySelectorAll('*')].find(e => e.children.length === 0"
            f" && e.textContent.trim().startsWith({json.dumps(args.version_prefix)}));"
            " if (leaf) leaf.click(); return Boolean(leaf); })()"
        )
        await asyncio.sleep(3)
        await page.eval(
            "(() => { const items = [...document.querySelectorAll('*')].filter(e => e.children.length === 0"
            " && e.textContent.trim() === 'deposit' && e.getBoundingClientRect().left > 1000);"
            " if (items.length) items[0].click(); return items.length; })()"
        )
        await asyncio.sleep(3)
        await page.screenshot(args.out / "task-graded-regions.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--view", type=int, required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--username", default="admin@example.com")
    p.add_argument("--password", required=True)
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--version-prefix", default="v0", help="start of the backend's prediction tab label")
    p.add_argument("--size", default="1600,1000")
    p.add_argument(
        "--scroll-rows", type=int, default=0, help="scroll the Data Manager table down by this many rows"
    )
    p.add_argument("--port", type=int, default=9333, help="DevTools port")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium not found (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={args.size}",
            f"--remote-debugging-port={args.port}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        ws_url = ""
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json") as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
                    break
            except OSError:
                pass
            time.sleep(0.5)
        if not ws_url:
            raise SystemExit("chromium: DevTools endpoint did not come up")
        asyncio.run(_run(args, ws_url))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
