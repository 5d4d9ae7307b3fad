"""The web UI in a real browser: headless Chromium (Debian's) driven by selenium against `ml-persistence ui`.

Skipped when Chromium, chromedriver or selenium is missing, unless ML_PERSISTENCE_REQUIRE_BROWSER=1
(CI sets it): then those tests fail instead. Nothing sleeps: every wait is a WebDriverWait on the
page's own signals (document.body.dataset.page / dataset.updated, Plotly's graph data), and the live
trainer is driven line by line over stdin. Screenshots go to test-artifacts/ui/ (CI artifacts).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from conftest import REPO, subprocess_env

try:
    from selenium import webdriver
    from selenium.common.exceptions import (NoAlertPresentException, NoSuchElementException,
                                            StaleElementReferenceException, WebDriverException)
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - reported by the `driver` fixture
    webdriver = None  # type: ignore[assignment]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRED = os.environ.get("ML_PERSISTENCE_REQUIRE_BROWSER") == "1"
SCREENSHOTS = REPO / "test-artifacts" / "ui"
HOSTILE = "<script>alert(1)</script>"
WAIT = 30


def _missing() -> Optional[str]:
    if webdriver is None:
        return "selenium is not installed"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing"
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"the ui extra is missing ({exc})"
    return None


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"ML_PERSISTENCE_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# -- the database: two demo runs, a hostile run with an image artifact -------------------------------------


def png_bytes(width: int = 16, height: int = 12) -> bytes:
    """A valid RGB PNG (a red rectangle), from zlib and struct alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes((220, 40, 40)) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


HOSTILE_RUN = r'''
import sys

from ml_persistence import ExperimentTracker

db, png = sys.argv[1], sys.argv[2]
t = ExperimentTracker(db)
exp = t.start_experiment("<script>alert(1)</script>", experiment_type="<img src=x onerror=alert(2)>",
                         tags=["<b>tag</b>"], description="<img src=x onerror=alert(3)>")
t.log_hyperparameters_batch({"learning_rate": 0.01, "gamma": 0.99, "<i>param</i>": "<script>alert(4)</script>"})
for episode, value in enumerate([0.5, 1.5, 1.0, 2.5, 2.0]):
    t.log_metric("val_sharpe", value, episode=episode)
t.log_metric("<img src=x onerror=alert(5)>", 1.0, step=0)
t.log_metric("<img src=x onerror=alert(5)>", 2.0, step=1)
t.log_artifact(png, "plot", artifact_name="<script>alert(6)</script>.png")
t.end_experiment("completed", notes="<script>alert(7)</script>")
print(exp)
'''

# A trainer driven over stdin: prints its experiment id, then per "step" line logs one `loss` row,
# flushes and prints "ok"; "end" ends the experiment ("ended"); EOF exits.
TRAINER = r'''
import sys

from ml_persistence import ExperimentTracker

tracker = ExperimentTracker(sys.argv[1])
experiment_id = tracker.start_experiment("live-trainer", experiment_type="rl")
tracker.log_metric("loss", 1.0, step=0)
tracker.flush()
print(experiment_id, flush=True)
step = 0
for line in sys.stdin:
    if line.strip() == "step":
        step += 1
        tracker.log_metric("loss", 1.0 / (step + 1), step=step)
        tracker.flush()
        print("ok", flush=True)
    elif line.strip() == "end":
        tracker.end_experiment("completed")
        print("ended", flush=True)
'''


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


class Database:
    def __init__(self, path: str, demo: list[int], hostile: int, directory: Path) -> None:
        self.path, self.demo, self.hostile, self.directory = path, demo, hostile, directory


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Database:
    if _missing():
        _unavailable(_missing() or "")
    directory = tmp_path_factory.mktemp("ui_browser")
    db = str(directory / "ml_experiments.db")
    demo = []
    for seed in (1, 2):
        out = _run([sys.executable, "-m", "ml_persistence", "demo", "--db", db, "--episodes", "30",
                    "--seed", str(seed)], directory)
        demo.append(int(re.search(r"Demo experiment (\d+)", out).group(1)))
    png = directory / "preview.png"
    png.write_bytes(png_bytes())
    hostile = int(_run([sys.executable, "-c", HOSTILE_RUN, db, str(png)], directory).strip())
    return Database(db, demo, hostile, directory)


# -- the server and the browser -------------------------------------------------------------------------------


def _pump(stream: Any, sink: Callable[[str], None]) -> None:
    for line in stream:
        sink(line)


class LineProcess:
    """A child process whose stdout lines are read with a timeout (never a sleep)."""

    def __init__(self, args: list[str], cwd: Path, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, env=subprocess_env(), text=True,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        self.threads = [threading.Thread(target=_pump, args=(self.proc.stdout, self.lines.put), daemon=True),
                        threading.Thread(target=_pump, args=(self.proc.stderr, self.stderr.append), daemon=True)]
        for t in self.threads:
            t.start()

    def line(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no output from {self.proc.args[:4]}; stderr: {''.join(self.stderr)}") from None

    def send(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for t in self.threads:
            t.join(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.close()


class UI:
    """The running `ml-persistence ui`: its base URL and the URL with the token it printed."""

    def __init__(self, base: str, login: str) -> None:
        self.base, self.login = base, login


@pytest.fixture(scope="module")
def ui(database: Database) -> Iterator[UI]:
    proc = LineProcess([sys.executable, "-m", "ml_persistence", "ui", "--db", database.path, "--port", "0"],
                       database.directory)
    try:
        first = proc.line()
        m = re.search(r"at ((http://127\.0\.0\.1:\d+)/\?token=[A-Za-z0-9_\-]+)$", first)
        assert m, first  # a token on loopback too
        yield UI(m.group(2), m.group(1))
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def server(ui: UI, driver: Any) -> str:
    """The base URL, once the browser has opened the printed URL (its token is now a cookie)."""
    driver.get(ui.login)
    WebDriverWait(driver, WAIT).until(lambda d: d.current_url == ui.base + "/")
    return ui.base


@pytest.fixture(scope="module")
def driver(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # WebGL (the sweep view's parallel coordinates) in software: SwiftShader, which Chromium asks to be named.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-sync", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        _unavailable(f"Chromium did not start: {exc.msg}")
    browser.set_page_load_timeout(WAIT)
    browser.set_script_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(autouse=True)
def _clean_console(driver: Any) -> Iterator[None]:
    """No errors in the console (CSP violations, exceptions) and no alert, in every test."""
    driver.get_log("browser")  # drop what earlier tests left
    yield
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    assert_no_alert(driver)


def assert_no_alert(driver: Any) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    raise AssertionError(f"an alert opened: {text!r}")


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def updated(driver: Any) -> Optional[str]:
    return js(driver, "return document.body.dataset.updated || null")


def wait(driver: Any, condition: Callable[[Any], Any], message: str = "") -> Any:
    return WebDriverWait(driver, WAIT).until(condition, message)


def settle(driver: Any, action: Callable[[Any], Any], message: str = "") -> Any:
    """Run `action` until it gets through: the runs list re-renders its rows every few seconds."""
    result: list[Any] = []

    def attempt(d: Any) -> bool:
        result[:] = [action(d)]
        return True

    WebDriverWait(driver, WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                  ).until(attempt, message)
    return result[0]


def row_ids(driver: Any) -> list[int]:
    return settle(driver, lambda d: [int(r.get_attribute("data-id"))
                                     for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-id]")])


def wait_page(driver: Any, page: str, after: Optional[str] = None) -> None:
    """Wait until `page` rendered (again, if `after` is the previous dataset.updated)."""
    wait(driver, lambda d: js(d, "return document.body.dataset.page") == page
         and updated(d) is not None and updated(d) != after, f"page {page} not rendered")


def open_fresh(driver: Any, url: str, page: str) -> None:
    """Load the app anew (a new document: no state kept from earlier tests) and wait for `page`."""
    driver.get("about:blank")
    driver.get(url)
    wait_page(driver, page)


def screenshot(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / name))


def chart_points(driver: Any, selector: str = "div.chart") -> int:
    return js(driver, "const g = document.querySelector(arguments[0]);"
                      "return g && g.data && g.data.length && g.data[0].x ? g.data[0].x.length : 0", selector)


def run_status(driver: Any) -> Optional[str]:
    """#run-status's text, read in one go (a live run page replaces the badge at every poll)."""
    return js(driver, "const s = document.getElementById('run-status'); return s ? s.textContent : null")


def error_box(driver: Any) -> str:
    return js(driver, "const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : ''")


# -- the tests -------------------------------------------------------------------------------------------------


def test_runs_page(driver: Any, server: str, database: Database) -> None:
    open_fresh(driver, server + "/", "runs")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-id]")) >= 3, "rows")
    ids = set(row_ids(driver))
    assert {*database.demo, database.hostile} <= ids
    for key in ("id", "name", "status", "start_time"):
        assert driver.find_elements(By.CSS_SELECTOR, f"#runs-table th[data-sort={key}]"), key
    for selector in ("select#filter-type", "select#filter-status", "select#filter-tag", "input#search",
                     "button#compare-button"):
        assert driver.find_elements(By.CSS_SELECTOR, selector), selector
    assert len(driver.find_elements(By.CSS_SELECTOR, "input.compare-check[data-id]")) == len(ids)
    assert error_box(driver) == ""
    screenshot(driver, "runs.png")

    # filtering by type narrows the rows (the hostile type is an option, as text)
    before = updated(driver)
    Select(driver.find_element(By.ID, "filter-type")).select_by_value("rl")
    wait_page(driver, "runs", before)
    shown = set(row_ids(driver))
    assert set(database.demo) <= shown and database.hostile not in shown
    options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#filter-type option")]
    assert "<img src=x onerror=alert(2)>" in options

    # sorting by id, descending on the second click
    Select(driver.find_element(By.ID, "filter-type")).select_by_value("")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-id]")) == len(ids), "unfiltered")
    header = driver.find_element(By.CSS_SELECTOR, "th[data-sort=id]")
    header.click()
    header.click()
    order = row_ids(driver)
    assert order == sorted(order, reverse=True)


def test_hostile_name_is_text(driver: Any, server: str, database: Database) -> None:
    open_fresh(driver, server + "/", "runs")
    link = f"tr[data-id='{database.hostile}'] a.run-link"
    assert settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, link).text) == HOSTILE
    assert_no_alert(driver)
    assert js(driver, "return document.querySelectorAll('#app script, #app img:not(.artifact-preview)').length") == 0

    before = updated(driver)
    settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, link).click())
    wait_page(driver, "run", before)
    assert driver.find_element(By.ID, "run-title").text == HOSTILE
    assert driver.title.startswith(HOSTILE)
    assert "<script>alert(7)</script>" in driver.find_element(By.ID, "notes").text
    assert "<script>alert(4)</script>" in driver.find_element(By.ID, "hyperparameters").text
    # the hostile metric name is a chart (a Plotly title, escaped), not markup
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "div.chart[data-metric='<img src=x onerror=alert(5)>']"))
    assert js(driver, "return document.querySelectorAll('#app script, #app img:not(.artifact-preview)').length") == 0
    assert_no_alert(driver)


def test_run_page_charts_and_sections(driver: Any, server: str, database: Database) -> None:
    run_id = database.demo[0]
    open_fresh(driver, server + "/", "runs")
    before = updated(driver)
    settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-id='{run_id}'] a.run-link").click())
    wait_page(driver, "run", before)
    assert driver.current_url.endswith(f"#/run/{run_id}")
    assert run_status(driver) == "completed"
    charts = driver.find_elements(By.CSS_SELECTOR, "#charts div.chart[data-metric]")
    names = {c.get_attribute("data-metric") for c in charts}
    assert {"policy_loss", "val_sharpe", "train_return"} <= names
    wait(driver, lambda d: chart_points(d) > 0, "a chart with points")
    loss_points = chart_points(driver, "div.chart[data-metric='policy_loss']")
    assert loss_points == 600  # small series come whole
    for section in ("repro", "hyperparameters", "datasets", "models", "artifacts", "notes", "metadata"):
        assert driver.find_element(By.ID, section).is_displayed(), section
    assert "learning_rate" in driver.find_element(By.ID, "hyperparameters").text
    assert "BTC-USD-Daily-synthetic" in driver.find_element(By.ID, "datasets").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#models tr.best")) == 1
    assert error_box(driver) == ""
    screenshot(driver, "run.png")


def test_log_scale_smoothing_and_axis(driver: Any, server: str, database: Database) -> None:
    run_id = database.demo[0]
    open_fresh(driver, f"{server}/#/run/{run_id}", "run")
    chart = "div.chart[data-metric='policy_loss']"
    wait(driver, lambda d: chart_points(d, chart) > 0)
    y_type = "return document.querySelector(arguments[0]).layout.yaxis.type"
    assert js(driver, y_type, chart) != "log"

    driver.find_element(By.ID, "log-scale").click()
    wait(driver, lambda d: js(d, y_type, chart) == "log", "log scale")
    assert js(driver, "return [...document.querySelectorAll('div.chart')].every(g => g.layout.yaxis.type === 'log')")

    # smoothing: a raw trace and a smoothed one, the smoothed one the page's own EMA of the raw
    js(driver, "const s = document.getElementById('smoothing'); s.value = '0.9';"
               "s.dispatchEvent(new Event('input', {bubbles: true}));")
    wait(driver, lambda d: js(d, "return document.querySelector(arguments[0]).data.length", chart) == 2, "smoothing")
    raw, smooth = js(driver, "const g = document.querySelector(arguments[0]); return [g.data[0].y, g.data[1].y]", chart)
    assert len(raw) == len(smooth) == 600 and raw != smooth
    assert smooth == js(driver, "return window.mlpSmooth(arguments[0], 0.9)", raw)
    assert js(driver, "return window.mlpSmooth([1, 2, 3], 0)") == [1, 2, 3]
    assert js(driver, "return window.mlpSmooth([1, null, 3], 0.5)")[1] is None
    assert max(abs(a - b) for a, b in zip(raw[1:], raw[:-1])) > max(abs(a - b) for a, b in zip(smooth[1:], smooth[:-1]))
    assert js(driver, y_type, chart) == "log"  # smoothing keeps the scale

    # the x axis: each choice refetches the curves against it
    axis = Select(driver.find_element(By.ID, "x-axis"))
    xs_of = "return document.querySelector(arguments[0]).data[0].x"
    for choice in ("step", "time", "episode"):
        if axis.first_selected_option.get_attribute("value") == choice:
            continue
        before = updated(driver)
        axis.select_by_value(choice)
        wait_page(driver, "run", before)
        xs = js(driver, xs_of, chart)
        assert len(xs) == 600 and xs == sorted(xs), choice
        if choice == "step":
            assert xs[-1] > 1000
        elif choice == "time":
            assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", x) for x in xs)
        else:
            assert xs[-1] == 29
    assert js(driver, y_type, chart) == "log"


def test_image_artifact_preview(driver: Any, server: str, database: Database) -> None:
    open_fresh(driver, f"{server}/#/run/{database.hostile}", "run")
    img = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#artifacts img.artifact-preview"))
    wait(driver, lambda d: js(d, "return arguments[0].complete && arguments[0].naturalWidth", img) > 0, "image")
    assert js(driver, "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [16, 12]
    assert img.get_attribute("alt") == "<script>alert(6)</script>.png"
    assert re.search(rf"/api/experiments/{database.hostile}/artifacts/\d+$", img.get_attribute("src"))


def test_compare(driver: Any, server: str, database: Database) -> None:
    first = database.demo[0]
    open_fresh(driver, server + "/", "runs")
    for run_id in (first, database.hostile):
        check = f"input.compare-check[data-id='{run_id}']"
        settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, check).click())
        assert settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, check).is_selected())
    button = driver.find_element(By.ID, "compare-button")
    assert button.is_enabled()
    before = updated(driver)
    button.click()
    wait_page(driver, "compare", before)
    assert re.search(rf"#/compare\?ids={min(first, database.hostile)},{max(first, database.hostile)}$",
                     driver.current_url), driver.current_url

    # The default metric is the one both runs logged (val_sharpe), not the alphabetically first
    assert Select(driver.find_element(By.ID, "compare-metric")).first_selected_option.get_attribute("value") == "val_sharpe"
    traces = js(driver, "return document.getElementById('compare-chart').data.map(t => t.x.length)")
    assert traces == [30, 5] or traces == [5, 30], traces

    differs = {r.get_attribute("data-param") for r in
               driver.find_elements(By.CSS_SELECTOR, "#compare-hyperparameters tr.differs")}
    assert {"learning_rate", "<i>param</i>", "hidden_dim"} <= differs
    assert "gamma" not in differs  # 0.99 in both
    assert driver.find_elements(By.CSS_SELECTOR, "#compare-hyperparameters tr[data-param='gamma']")
    headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#compare-hyperparameters thead th a.run-link")]
    assert f"#{database.hostile} {HOSTILE}" in headers
    assert error_box(driver) == ""
    screenshot(driver, "compare.png")

    # two demo runs: the default metric is one of those with the most points both share, one trace each
    a, b = database.demo
    open_fresh(driver, f"{server}/#/compare?ids={a},{b}", "compare")
    assert js(driver, "return document.getElementById('compare-chart').data.length") == 2
    assert js(driver, "return document.getElementById('compare-chart').data.map(t => t.x.length)") == [600, 600]
    assert Select(driver.find_element(By.ID, "compare-metric")).first_selected_option.get_attribute("value") == "approx_kl"

    # the metric chosen is kept in the URL: loading it shows that metric
    before = updated(driver)
    Select(driver.find_element(By.ID, "compare-metric")).select_by_value("val_sharpe")
    wait_page(driver, "compare", before)
    assert driver.current_url.endswith(f"#/compare?ids={a},{b}&metric=val_sharpe")
    open_fresh(driver, driver.current_url, "compare")
    assert js(driver, "return document.getElementById('compare-chart').dataset.metric") == "val_sharpe"
    assert js(driver, "return document.getElementById('compare-chart').data.map(t => t.x.length)") == [30, 30]
    assert not driver.find_elements(By.CSS_SELECTOR, "#compare-hyperparameters tr.differs")


def test_missing_run_shows_an_error(driver: Any, server: str, database: Database) -> None:
    open_fresh(driver, f"{server}/#/run/987654", "run")
    assert "987654" in error_box(driver)
    driver.get_log("browser")  # the 404 fetch is logged by the browser itself: expected here


def test_live_run_updates(driver: Any, server: str, database: Database) -> None:
    trainer = LineProcess([sys.executable, "-c", TRAINER, database.path], database.directory, stdin=True)
    try:
        run_id = int(trainer.line())
        open_fresh(driver, server + "/", "runs")
        js(driver, "window.ML_UI_POLL_MS = 100")
        before = updated(driver)
        js(driver, "location.hash = arguments[0]", f"#/run/{run_id}")
        wait_page(driver, "run", before)
        assert run_status(driver) == "running"
        wait(driver, lambda d: chart_points(d, "div.chart[data-metric='loss']") == 1, "the first point")
        for n in (2, 3, 4):
            assert trainer.send("step") == "ok"
            wait(driver, lambda d: chart_points(d, "div.chart[data-metric='loss']") == n, f"point {n} appears")
        ys = js(driver, "return document.querySelector(\"div.chart[data-metric='loss']\").data[0].y")
        assert ys == [1.0, 0.5, 1 / 3, 0.25]
        assert trainer.send("end") == "ended"
        wait(driver, lambda d: run_status(d) == "completed", "status completed")
        assert error_box(driver) == ""
        screenshot(driver, "live.png")
    finally:
        trainer.close()
        if trainer.proc.returncode != 0:
            pytest.fail(f"trainer exit {trainer.proc.returncode}: {''.join(trainer.stderr)}")


def test_without_the_token_nothing_shows_and_the_printed_url_logs_in(driver: Any, ui: UI, server: str) -> None:
    open_fresh(driver, server + "/", "runs")
    assert "PPO_BTC-USD_demo" in driver.find_element(By.TAG_NAME, "body").text
    driver.delete_all_cookies()
    driver.get("about:blank")
    driver.get(server + "/")
    # The page itself may come from the browser's cache; every request for data is refused.
    wait(driver, lambda d: "a token is required" in d.find_element(By.TAG_NAME, "body").text, "the refusal")
    assert "PPO_BTC-USD_demo" not in driver.find_element(By.TAG_NAME, "body").text
    driver.get_log("browser")  # the refused requests' 401s are expected here
    driver.get(ui.login)
    wait_page(driver, "runs")
    assert driver.current_url == server + "/"  # the token left the address bar for an HttpOnly cookie
    assert js(driver, "return document.cookie") == ""


def test_the_page_open_writes_forwards_the_browser_in(driver: Any, ui: UI, server: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ml_persistence.ui.browser import write_redirect

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    page = Path(write_redirect(ui.login, int(server.rsplit(":", 1)[1])))
    driver.get(server + "/")
    driver.delete_all_cookies()
    driver.get(page.as_uri())
    wait_page(driver, "runs")  # file:// -> the printed URL -> its cookie -> the runs
    assert driver.current_url == server + "/"
    assert "PPO_BTC-USD_demo" in driver.find_element(By.TAG_NAME, "body").text


@pytest.fixture(scope="module", autouse=True)
def _screenshots_dir() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
