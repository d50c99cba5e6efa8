"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by
Playwright's Python package with `executable_path`; nothing downloads a
browser).

Seeded usage (rows written into the gateway's `requests` table on three days
for key A, one for key B; the rollup trigger does the rest): signed in with A's
key the charts have 30 daily points (12 weekly after the switch) whose total is
A's usage on the right days, the usage table equals `usage --json`, and only
A's key shows; the admin sees every key; a bad key is refused; the CSV export
equals the table on screen; the session is an HttpOnly, SameSite=Strict cookie
and nothing is in local storage or the URL; the page fits a phone's width and
follows a dark system theme. Screenshots go to tests/screenshots/
(git-ignored). Where the browser is missing the tests skip, saying why, except
under CI=true, where they fail.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gateway_process import ADMIN_KEY, GatewayProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent / "screenshots"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

try:
    from playwright.sync_api import BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra is missing
    sync_playwright = None


def _unavailable() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    why = _unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard's browser tests cannot run in CI: {why}")
        pytest.skip(why)
    assert sync_playwright is not None
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        yield pw, tmp_path_factory


def new_context(browser: Any, **options: Any) -> BrowserContext:
    pw, tmp = browser
    return pw.chromium.launch_persistent_context(  # a fresh --user-data-dir each time
        str(tmp.mktemp("chromium-profile")),
        executable_path=CHROMIUM,
        headless=True,
        args=FLAGS,
        accept_downloads=True,
        **options,
    )


def seed(gw: GatewayProcess, key_id: str, days_ago: list[int], per_day: int) -> None:
    """Usage rows written as the gateway's writer writes them: into `requests`
    with their rollups, in one transaction (`proxy.usage.rollups.write_rows`)."""
    import sqlite3

    from proxy.usage.rollups import write_rows
    from proxy.usage.rows import row_of

    now = time.time()
    rows = []
    for d in days_ago:
        for i in range(per_day):
            rows.append(
                row_of(
                    {"request_id": f"req_seed_{key_id}_{d}_{i}", "ts": now - d * 86400 - i,
                     "key_id": key_id, "model": "prometheus-lite", "deployment": "sim:x",
                     "endpoint": "chat", "status": 200 if i else 502, "stream": 1,
                     "input_tokens": 100 + i, "output_tokens": 20, "audio_seconds": 0.0,
                     "cost_usd": 0.0001, "latency_ms": 120.0 + 40 * i, "ttft_ms": 30.0 + i,
                     "usage_source": "upstream"}
                )
            )  # fmt: skip
    conn = sqlite3.connect(gw.db_path, timeout=10)
    with conn:
        write_rows(conn, rows)
    conn.close()


@pytest.fixture()
def seeded(gateway: GatewayProcess) -> dict[str, Any]:
    a, b = gateway.create_key("browser-a"), gateway.create_key("browser-b")
    seed(gateway, a["id"], [0, 2, 10], 4)
    seed(gateway, b["id"], [1], 3)
    return {"gw": gateway, "a": a, "b": b}


def sign_in(page: Page, gw: GatewayProcess, key: str) -> None:
    page.goto(f"{gw.root_url}/dashboard")
    page.fill("#key", key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)


def chart(page: Page, name: str) -> dict[str, list[Any]]:
    traces = page.evaluate(
        f"document.getElementById('chart-{name}').data.map(t => [t.name, t.x, t.y])"
    )
    return {trace[0]: trace for trace in traces}


def utc_day(days_ago: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days_ago)).isoformat()


def downloaded(page: Page, button: str) -> list[list[str]]:
    with page.expect_download() as download:
        page.click(button)
    return list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))


def shown_table(page: Page, table: str) -> list[list[str]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        f"#{table} tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
    )


def check_every_csv(page: Page) -> None:
    """Each panel's CSV button gives what that panel shows."""
    for table, button in (("usage", "#export"), ("keys", "#export-keys"), ("log", "#export-log")):
        exported = downloaded(page, button)
        assert exported == shown_table(page, table) and len(exported) > 1, table
    points = [["chart", "series", "period", "value"]]
    for name in ("requests", "tokens", "spend", "latency", "audio"):
        for trace, xs, ys in chart(page, name).values():
            points += [
                [name, trace, x, "" if y is None else f"{y}"] for x, y in zip(xs, ys, strict=True)
            ]
    exported = downloaded(page, "#export-charts")
    assert len(exported) == len(points) > 30
    for got, want in zip(exported, points, strict=True):
        assert got[:3] == want[:3]
        assert (got[3] == want[3]) or float(got[3]) == pytest.approx(float(want[3]), rel=1e-12)


def test_a_key_holder_sees_their_charts_only(browser: Any, seeded: dict[str, Any]) -> None:
    gw, a, b = seeded["gw"], seeded["a"], seeded["b"]
    ctx = new_context(browser, viewport={"width": 1280, "height": 1600}, timezone_id="UTC")
    try:
        page = ctx.new_page()
        sign_in(page, gw, a["key"])
        _, x, y = chart(page, "requests")["total"]
        assert len(x) == 30 and len(y) == 30
        assert dict(zip(x, y, strict=True)) == {
            day: (4 if day in {utc_day(0), utc_day(2), utc_day(10)} else 0) for day in x
        }
        table = page.eval_on_selector_all(
            "#usage tbody tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
        )
        assert {
            (r[0], r[1]): (int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[7], r[8], r[10])
            for r in table
            if r[1] != "total"
        } == {
            (u["period"], u["model"]): (
                u["requests"], u["errors"], u["input_tokens"], u["output_tokens"],
                f"{u['cost_usd']:.6f}", f"{u['latency_ms_p50']:.1f}", f"{u['ttft_ms_p50']:.1f}",
            )
            for u in gw.usage(a["id"])
        }  # fmt: skip
        assert page.inner_text("#scope") == f"Key {a['id']}"
        key_cells = page.eval_on_selector_all(
            "#keys tbody tr td:first-child", "c => c.map(x => x.textContent)"
        )
        assert key_cells == [a["id"]]
        page_text = page.inner_text("body")
        assert b["id"] not in page_text and "browser-b" not in page_text
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        assert a["key"] not in page.url and a["key"] not in page.content()
        [cookie] = ctx.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: not readable by script
        page.screenshot(path=str(SHOTS / "user-daily.png"), full_page=True)

        page.select_option("#by", "week")
        page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
        _, x, y = chart(page, "requests")["total"]
        assert len(x) == 12 and sum(y) == 12
        monday = date.fromisoformat(utc_day(0))
        assert x[-1] == (monday - timedelta(days=monday.weekday())).isoformat()
        page.screenshot(path=str(SHOTS / "user-weekly.png"), full_page=True)

        check_every_csv(page)

        page.select_option("#log-status", "error")
        page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
        statuses = page.eval_on_selector_all(
            "#log tbody td:nth-child(4)", "c => c.map(x => x.textContent)"
        )
        assert statuses == ["502"] * 3
        check_every_csv(page)  # the log's CSV is the filtered log on screen
    finally:
        ctx.close()


def test_the_admin_sees_every_key(browser: Any, seeded: dict[str, Any]) -> None:
    gw, a, b = seeded["gw"], seeded["a"], seeded["b"]
    ctx = new_context(browser, viewport={"width": 1280, "height": 1600}, timezone_id="UTC")
    try:
        page = ctx.new_page()
        sign_in(page, gw, ADMIN_KEY)
        keys = page.eval_on_selector_all(
            "#keys tbody tr td:first-child", "c => c.map(x => x.textContent)"
        )
        assert {a["id"], b["id"]} <= set(keys)
        _, x, y = chart(page, "requests")["total"]
        per_day = dict(zip(x, y, strict=True))
        assert per_day[utc_day(1)] >= 3 and per_day[utc_day(10)] >= 4
        page.select_option("#key-filter", b["id"])
        page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
        _, x, y = chart(page, "requests")["total"]
        assert sum(y) == 3 and dict(zip(x, y, strict=True))[utc_day(1)] == 3
        page.screenshot(path=str(SHOTS / "admin.png"), full_page=True)
    finally:
        ctx.close()


def test_a_bad_key_is_refused(browser: Any, seeded: dict[str, Any]) -> None:
    ctx = new_context(browser, viewport={"width": 1280, "height": 800})
    try:
        page = ctx.new_page()
        page.goto(f"{seeded['gw'].root_url}/dashboard")
        page.fill("#key", "prom_sk_" + "x" * 43)
        page.click("#sign-in button[type=submit]")
        page.wait_for_selector("#sign-in-error:not([hidden])", timeout=30_000)
        assert page.is_hidden("#board") and ctx.cookies() == []
        page.screenshot(path=str(SHOTS / "refused.png"))
    finally:
        ctx.close()


def test_a_phone_in_dark_mode(browser: Any, seeded: dict[str, Any]) -> None:
    ctx = new_context(
        browser, viewport={"width": 390, "height": 844}, color_scheme="dark", timezone_id="UTC"
    )
    try:
        page = ctx.new_page()
        sign_in(page, seeded["gw"], seeded["a"]["key"])
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(17, 20, 24)"
        page.screenshot(path=str(SHOTS / "phone-dark.png"), full_page=True)
    finally:
        ctx.close()
