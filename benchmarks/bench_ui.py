#!/usr/bin/env python3
"""Web UI speed on a big run: the metric-series API, and time to first chart in headless Chromium.

    PYTHONPATH=. python benchmarks/bench_ui.py                                # 10 metrics x 1M points
    PYTHONPATH=. python benchmarks/bench_ui.py --points 100000 --metrics 4    # quicker
    PYTHONPATH=. python benchmarks/bench_ui.py --json out.json --keep

A temporary database gets one experiment (made by the library) and N metrics x P points (made by
SQL, a recursive CTE, interleaved as a training loop logs them: one row per metric per step;
step = 0..P-1, episode = step / 1000, timestamps 10 ms apart, loss-, reward- and noise-like
values). Then `ml-persistence ui --port 0` serves it and:

(a) the API: GET /api/experiments/ID/metric?name=M&x=step&points=2000 (what the page asks for)
    per metric, cold (the database file's pages dropped from the OS cache first, with
    posix_fadvise DONTNEED, and the first request of a fresh server) and warm (median of the next
    requests); also the run JSON (/api/experiments/ID) and one x=time series.
(b) the browser: headless Chromium (Debian's /usr/bin/chromium + chromedriver) loads
    /#/run/ID in a new document. A MutationObserver installed before the page's own scripts
    (DevTools Page.addScriptToEvaluateOnNewDocument) records performance.now() -- milliseconds
    since navigation start -- when the first div.chart has Plotly data with points, and when all
    N charts have; the page's own "rendered" signal (document.body.dataset.updated) too. The
    first load has an empty browser cache; the later ones (median) a warm one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ml_persistence  # noqa: E402
from bench_core import CpuWatch, fmt_int, header, report_background, say, summary_table  # noqa: E402
from ml_persistence import ExperimentTracker  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
POINTS_ASKED = 2000  # what app.js asks per series

NAMES = ["train_loss", "val_loss", "reward", "entropy", "lr", "grad_norm", "kl", "value_loss",
         "policy_loss", "accuracy"]

FILL = """
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < :points - 1),
               m(k, name) AS (SELECT key, value FROM json_each(:names))
INSERT INTO metrics (experiment_id, metric_name, metric_type, episode, step, value, split, timestamp)
SELECT :experiment, m.name, 'scalar', s.i / 1000, s.i,
       CASE m.k % 3
           WHEN 0 THEN (1.0 + m.k) / (1.0 + s.i / 5000.0) + ((abs(random()) % 10000) / 10000.0 - 0.5) * 0.05
           WHEN 1 THEN 10.0 * s.i / :points + ((abs(random()) % 10000) / 10000.0 - 0.5) * 2.0
           ELSE ((s.i * 2654435761 + m.k) % 4294967296) / 4294967296.0 END,
       'train',
       strftime('%Y-%m-%d %H:%M:%f', 1767225600 + s.i / 100.0, 'unixepoch') || '000'
FROM s, m
ORDER BY s.i, m.k
"""

# Runs before the page's own scripts (CDP), records when charts get their data.
MARKS = r"""
window.__marks = {};
(function () {
  function check() {
    const marks = window.__marks;
    const charts = document.querySelectorAll('div.chart');
    let withData = 0;
    for (const g of charts) {
      if (g.data && g.data.length && g.data[0].x && g.data[0].x.length) withData += 1;
    }
    const now = performance.now();
    if (withData && marks.first === undefined) marks.first = now;
    if (charts.length && withData === charts.length && marks.all === undefined) {
      marks.all = now;
      marks.charts = charts.length;
    }
    if (document.body && document.body.dataset.page === 'run' && document.body.dataset.updated
        && marks.rendered === undefined) marks.rendered = now;
    if (window.Plotly && marks.plotly === undefined) marks.plotly = now;
  }
  new MutationObserver(check).observe(document, {subtree: true, childList: true, attributes: true});
})();
"""


def build(path: str, metrics: int, points: int) -> tuple[int, float]:
    started = time.perf_counter()
    tracker = ExperimentTracker(path, capture_environment=False)
    experiment = tracker.start_experiment("bench-ui", experiment_type="benchmark", tags=["bench"])
    tracker.log_hyperparameters_batch({"lr": 3e-4, "batch_size": 256})
    tracker.end_experiment("completed")
    tracker.close()
    ml_persistence.shutdown()
    conn = sqlite3.connect(path)
    try:
        conn.execute(FILL, {"points": points, "experiment": experiment, "names": json.dumps(NAMES[:metrics])})
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return experiment, time.perf_counter() - started


def drop_from_os_cache(path: str) -> bool:
    """Evict the file's pages from the page cache (our file only; nothing else is touched)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


class Server:
    def __init__(self, db: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "ml_persistence", "ui", "--db", db, "--port", "0"],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: [self.stderr.append(x) for x in self.proc.stderr], daemon=True).start()
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=60)
        m = re.search(r"at ((http://[^/\s]+)/\?token=(\S+))", found[0] if found else "")
        if not m:
            self.stop()
            raise RuntimeError(f"the server did not start: {found} {''.join(self.stderr)}")
        self.login, self.base, self.token = m.groups()  # the printed URL, and what it is made of

    def get(self, path: str) -> tuple[float, bytes]:
        started = time.perf_counter()
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=300) as response:
            body = response.read()
        return time.perf_counter() - started, body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def api_figures(db: str, experiment: int, names: list[str], repeats: int) -> dict[str, Any]:
    dropped = drop_from_os_cache(db)
    server = Server(db)
    try:
        out: dict[str, Any] = {"os_cache_dropped": dropped, "series": {}}
        seconds, body = server.get(f"/api/experiments/{experiment}")
        out["run_json_cold_s"] = seconds
        out["run_json_bytes"] = len(body)
        for name in names:
            path = f"/api/experiments/{experiment}/metric?name={name}&x=step&points={POINTS_ASKED}"
            cold, body = server.get(path)
            payload = json.loads(body)
            warm = sorted(server.get(path)[0] for _ in range(repeats))
            # Another client asking a nearby points= gets the same (cached) curve: points= is rounded.
            nearby = server.get(path.replace(f"points={POINTS_ASKED}", f"points={POINTS_ASKED - 1}"))[0]
            out["series"][name] = {"cold_s": cold, "warm_s": statistics.median(warm), "warm_min_s": warm[0],
                                   "nearby_points_s": nearby, "points": len(payload["xs"]),
                                   "total": payload["total"], "bytes": len(body),
                                   "downsampled": payload["downsampled"]}
        out["run_json_warm_s"] = statistics.median(server.get(f"/api/experiments/{experiment}")[0]
                                                   for _ in range(repeats))
        timed = f"/api/experiments/{experiment}/metric?name={names[0]}&x=time&points={POINTS_ASKED}"
        out["time_axis_s"] = statistics.median(server.get(timed)[0] for _ in range(repeats))
        list_s = statistics.median(server.get("/api/experiments")[0] for _ in range(repeats))
        out["runs_list_s"] = list_s
        return out
    finally:
        server.stop()


def browser_figures(db: str, experiment: int, n_charts: int, loads: int) -> Optional[dict[str, Any]]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        say("  selenium is not installed: no browser figures")
        return None
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        say(f"  {CHROMIUM} or {CHROMEDRIVER} is missing: no browser figures")
        return None
    profile = tempfile.mkdtemp(prefix="bench-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    server = Server(db)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(120)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": MARKS})
        driver.get(server.login)  # the token becomes a cookie, as when a user opens the printed URL
        runs = []
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(f"{server.base}/#/run/{experiment}")
            WebDriverWait(driver, 120, poll_frequency=0.05).until(
                lambda d: d.execute_script("return window.__marks && window.__marks.all !== undefined "
                                           "&& window.__marks.rendered !== undefined"))
            marks = driver.execute_script("return window.__marks")
            nav = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "const p = performance.getEntriesByName(location.origin + '/static/plotly.min.js')[0];"
                "return {response_end: n.responseEnd, dom_content_loaded: n.domContentLoadedEventEnd,"
                "        load: n.loadEventEnd, plotly_fetched: p ? p.responseEnd : null}")
            charts = driver.execute_script("return document.querySelectorAll('div.chart').length")
            downsampled = driver.execute_script(
                "return [...document.querySelectorAll('div.chart')].filter(g => g.dataset.downsampled === 'true')"
                ".length")
            points = driver.execute_script(
                "return [...document.querySelectorAll('div.chart')].map(g => g.data[0].x.length)")
            runs.append({**marks, **nav, "charts_found": charts, "downsampled_charts": downsampled,
                         "points_per_chart": points})
        if runs[0].get("charts") != n_charts:
            say(f"  note: {runs[0].get('charts')} charts on the page, {n_charts} metrics")
        return {"loads": runs}
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)


def ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=1_000_000, help="points per metric (default 1,000,000)")
    p.add_argument("--metrics", type=int, default=10, help=f"metrics (default 10, at most {len(NAMES)})")
    p.add_argument("--repeats", type=int, default=5, help="warm API requests per series (default 5)")
    p.add_argument("--loads", type=int, default=3, help="page loads in the browser (default 3)")
    p.add_argument("--no-browser", action="store_true", help="API figures only")
    p.add_argument("--tmpdir", help="directory for the database (default: a fresh temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the database")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    a = p.parse_args(argv)
    if not 1 <= a.metrics <= len(NAMES):
        p.error(f"--metrics must be 1..{len(NAMES)}")
    started = time.perf_counter()
    directory = a.tmpdir or tempfile.mkdtemp(prefix="bench-ui-")
    os.makedirs(directory, exist_ok=True)
    db = os.path.join(directory, "ui.db")
    if os.path.exists(db):
        os.remove(db)
    names = NAMES[:a.metrics]
    figures: dict[str, Any] = {"metrics": a.metrics, "points": a.points}
    try:
        header(f"database: {a.metrics} metrics x {fmt_int(a.points)} points")
        experiment, built_s = build(db, a.metrics, a.points)
        size = os.path.getsize(db)
        figures.update(build_s=built_s, db_bytes=size)
        say(f"  {fmt_int(a.metrics * a.points)} rows in {built_s:.1f} s; {size / 2**20:,.0f} MiB at {db}")

        header("API: one metric series (x=step, points=2000), per metric")
        watch = CpuWatch()
        api = api_figures(db, experiment, names, a.repeats)
        figures["api"] = api
        say(f"  OS page cache of the database dropped first: {'yes' if api['os_cache_dropped'] else 'no'}")
        say(f"  {'metric':<12} {'cold':>10} {'warm':>10} {'points=' + str(POINTS_ASKED - 1):>12} {'points':>7} "
            f"{'of':>11} {'bytes':>8}")
        for name, s in api["series"].items():
            say(f"  {name:<12} {ms(s['cold_s']):>10} {ms(s['warm_s']):>10} {ms(s['nearby_points_s']):>12} "
                f"{s['points']:>7} {fmt_int(s['total']):>11} {fmt_int(s['bytes']):>8}")
        say(f"  run JSON (/api/experiments/{experiment}): cold {ms(api['run_json_cold_s'])}, "
            f"warm {ms(api['run_json_warm_s'])}, {fmt_int(api['run_json_bytes'])} bytes")
        say(f"  one series against x=time: {ms(api['time_axis_s'])}; runs list: {ms(api['runs_list_s'])}")
        report_background(watch, figures["api"])

        browser = None
        if not a.no_browser:
            header(f"browser: headless Chromium loads #/run/{experiment} ({a.loads} loads)")
            browser = browser_figures(db, experiment, a.metrics, a.loads)
            if browser is not None:
                figures["browser"] = browser
                for i, run in enumerate(browser["loads"]):
                    say(f"  load {i + 1} ({'empty' if i == 0 else 'warm'} cache): index {run['response_end']:,.0f} ms, "
                        f"plotly.js fetched {run['plotly_fetched'] or 0:,.0f} ms, DOMContentLoaded "
                        f"{run['dom_content_loaded']:,.0f} ms, first chart {run['first']:,.0f} ms, "
                        f"all {run.get('charts')} charts {run['all']:,.0f} ms, page rendered {run['rendered']:,.0f} ms "
                        f"({run['downsampled_charts']} downsampled, {max(run['points_per_chart'])} points max)")

        header("summary")
        series = list(api["series"].values())
        colds = sorted(s["cold_s"] for s in series)
        warms = sorted(s["warm_s"] for s in series)
        rows = [
            ("rows in the database", fmt_int(a.metrics * a.points), "", None),
            ("series API, cold, median", ms(statistics.median(colds)), "", None),
            ("series API, cold, worst", ms(colds[-1]), "", None),
            ("series API, warm, median", ms(statistics.median(warms)), "", None),
            ("series API, warm, worst", ms(warms[-1]), "", None),
            ("points per series returned", str(max(s["points"] for s in series)), f"<= {2 * POINTS_ASKED}",
             max(s["points"] for s in series) <= 2 * POINTS_ASKED),
            ("run JSON, cold", ms(api["run_json_cold_s"]), "", None),
            ("run JSON, warm", ms(api["run_json_warm_s"]), "", None),
        ]
        if browser is not None:
            loads = browser["loads"]
            later = loads[1:] or loads
            rows += [
                ("first chart, empty cache", f"{loads[0]['first']:,.0f} ms", "", None),
                (f"all {a.metrics} charts, empty cache", f"{loads[0]['all']:,.0f} ms", "", None),
                ("first chart, warm cache (median)", f"{statistics.median(x['first'] for x in later):,.0f} ms", "", None),
                (f"all {a.metrics} charts, warm cache (median)", f"{statistics.median(x['all'] for x in later):,.0f} ms",
                 "", None),
            ]
        summary_table(rows)
        figures["elapsed_s"] = time.perf_counter() - started
        say(f"\n  total time {figures['elapsed_s']:.1f} s")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(figures, f, indent=2)
        return 0
    finally:
        if not a.keep and not a.tmpdir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
