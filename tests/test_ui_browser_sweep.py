"""The filter box, the sweep view, the System panel and model aliases in headless Chromium, on real logged runs.

The database is made by running code: a small real sweep (a momentum trader trained by SGD for
each of 12 settings of lr, gamma and batch_size, scored by its validation Sharpe ratio), a run with
system metrics sampled by the library, runs with text hyperparameters, and models with aliases.
Waits are on the page's own signals, never sleeps (see test_ui_browser.py, whose browser and server
fixtures this module shares). Screenshots go to test-artifacts/ui/; with ML_PERSISTENCE_DOCS_SCREENSHOTS=1
the README's go to docs/ too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from conftest import REPO
from test_ui_browser import (SCREENSHOTS, WAIT, Database, _clean_console, _missing, _run, _unavailable,  # noqa: F401
                             driver, error_box, js, open_fresh, row_ids, screenshot, server, settle, ui, updated,
                             wait, wait_page)

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the driver fixture reports it
    pass

DOCS = REPO / "docs"

# A real (small) sweep: for each setting, a momentum trader p = tanh(w * f + b) on a synthetic daily return
# series, f an EMA of past returns with decay gamma, trained by minibatch gradient ascent (lr, batch_size) on
# the first 2000 days, scored by the annualized Sharpe ratio of its positions on the last 1000.
SWEEP = r'''
import itertools, json, math, random, sys, time

from ml_persistence import ExperimentTracker, ModelRegistry


def returns(n, rng):
    out, drift = [], 0.0
    for _ in range(n):
        drift = 0.98 * drift + rng.gauss(0, 0.04)  # a slow trend under daily noise: momentum pays a little
        out.append(drift + rng.gauss(0, 1.0))       # percent
    return out


def features(series, gamma):
    f, out = 0.0, []
    for r in series:
        out.append(f)  # known before the day
        f = gamma * f + (1 - gamma) * r
    scale = math.sqrt(sum(x * x for x in out) / len(out)) or 1.0
    return [x / scale for x in out]


def sharpe(pnl):
    mean = sum(pnl) / len(pnl)
    sd = math.sqrt(sum((x - mean) ** 2 for x in pnl) / len(pnl)) or 1e-9
    return mean / sd * math.sqrt(252)


db = sys.argv[1]
series = returns(3000, random.Random(7))
train, val = series[:2000], series[2000:]
tracker = ExperimentTracker(db)
registry = ModelRegistry(db)
out = {"sweep": {}, "models": {}}
for lr, gamma, batch_size in itertools.product((1e-3, 1e-2, 1e-1), (0.9, 0.99), (16, 64)):
    run = tracker.start_experiment(f"momentum lr={lr:g} gamma={gamma:g} bs={batch_size}", experiment_type="rl",
                                   tags=["sweep", "momentum"])
    tracker.log_hyperparameters_batch({"lr": lr, "gamma": gamma, "batch_size": batch_size, "epochs": 8})
    ftr, fval = features(train, gamma), features(val, gamma)
    w, b, step = -0.3, 0.0, 0  # starts betting against the trend
    order, shuffle = list(range(len(train))), random.Random(1)
    for epoch in range(8):
        shuffle.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            gw = gb = loss = 0.0
            for i in batch:
                p = math.tanh(w * ftr[i] + b)
                loss -= p * train[i] - 0.05 * p * p
                d = (train[i] - 0.1 * p) * (1 - p * p)
                gw, gb = gw + d * ftr[i], gb + d
            w, b, step = w + lr * gw / len(batch), b + lr * gb / len(batch), step + 1
            tracker.log_metric("train_loss", loss / len(batch), step=step, epoch=epoch)
        score = sharpe([math.tanh(w * f + b) * r for f, r in zip(fval, val)])
        tracker.log_metrics_batch({"val_sharpe": score, "weight": w}, step=step, epoch=epoch)
    out["models"][run] = registry.register_model(run, f"/ckpt/{run}.json", val_metric=score, is_best=True)
    tracker.end_experiment("completed")
    out["sweep"][run] = {"lr": lr, "gamma": gamma, "batch_size": batch_size, "val_sharpe": score}

# Text hyperparameters (one hostile), for the categorical axes.
out["categorical"] = []
for n, optimizer in enumerate(["<b>adam</b>", "sgd", "sgd", None]):
    run = tracker.start_experiment(f"cat-{n}", experiment_type="sl", tags=["cat"])
    hyper = {"width": 32 * (n + 1), "<i>depth</i>": 2 + n % 2}
    if optimizer is not None:
        hyper["optimizer"] = optimizer
    tracker.log_hyperparameters_batch(hyper)
    tracker.log_metric("accuracy", 0.5 + n / 10, step=0)
    tracker.end_experiment("completed")
    out["categorical"].append(run)

# The library's own system sampler, every 0.1 s, while a loop trains; stops once 20 samples are stored.
from ml_persistence import MetricsLogger

run = tracker.start_experiment("with system metrics", experiment_type="sl", system_metrics=0.1)
reader = MetricsLogger(db)
deadline, step, x = time.monotonic() + 120, 0, 0.0
while True:
    for i in range(50000):
        x += (i % 7) * 1e-6
    step += 1
    tracker.log_metric("loss", 1.0 / step, step=step)
    tracker.flush()
    if len(reader.get_metric_history(run, "system/cpu_percent")) >= 20:
        break
    assert time.monotonic() < deadline, "no system samples"
tracker.end_experiment("completed")
out["system"] = run
out["system_metrics"] = [n for n in reader.list_metric_names(run) if n.startswith("system/")]

best = max(out["sweep"], key=lambda r: out["sweep"][r]["val_sharpe"])
registry.set_alias("champion", out["models"][best])
registry.set_alias("production", out["models"][best])
registry.flush()
out["best"] = best
print(json.dumps(out))
'''


class SweepDatabase(Database):
    def __init__(self, path: str, directory: Path, made: dict[str, Any]) -> None:
        super().__init__(path, [], 0, directory)
        self.sweep = {int(k): v for k, v in made["sweep"].items()}
        self.models = {int(k): v for k, v in made["models"].items()}
        self.categorical: list[int] = made["categorical"]
        self.system: int = made["system"]
        self.system_metrics: list[str] = made["system_metrics"]
        self.best: int = made["best"]


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> SweepDatabase:
    if _missing():
        _unavailable(_missing() or "")
    directory = tmp_path_factory.mktemp("ui_sweep_browser")
    db = str(directory / "ml_experiments.db")
    made = json.loads(_run([sys.executable, "-c", SWEEP, db], directory))
    return SweepDatabase(db, directory, made)


def docs_screenshot(driver: Any, name: str, down_to: Optional[str] = None) -> None:
    """Save test-artifacts/ui/NAME, and docs/ui-NAME when ML_PERSISTENCE_DOCS_SCREENSHOTS=1 (the README's images).

    ``down_to``: a selector whose element must be in the picture (the window grows to show it).
    """
    js(driver, "document.activeElement && document.activeElement.blur()")
    if down_to is not None:
        needed = js(driver, "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                            "return Math.ceil(r.bottom + window.scrollY) + 20 + window.outerHeight - window.innerHeight",
                    down_to)
        driver.set_window_size(1400, min(needed, 2400))  # taller only: the charts keep their size
    try:
        screenshot(driver, name)
        if os.environ.get("ML_PERSISTENCE_DOCS_SCREENSHOTS") == "1":
            shutil.copyfile(SCREENSHOTS / name, DOCS / f"ui-{name}")
    finally:
        if down_to is not None:
            driver.set_window_size(1400, 1000)


def hash_params(driver: Any) -> dict[str, list[str]]:
    fragment = urlsplit(driver.current_url).fragment
    return parse_qs(fragment.split("?", 1)[1]) if "?" in fragment else {}


def apply_filter(driver: Any, expression: str, order: str = "") -> None:
    """Type a filter (and order) into the runs page and press Enter; wait for the list it brings."""
    before = updated(driver)
    for element_id, text in (("filter", expression), ("order", order)):
        box = driver.find_element(By.ID, element_id)
        box.clear()
        box.send_keys(text)
    driver.find_element(By.ID, "filter").send_keys(Keys.ENTER)
    wait_page(driver, "runs", before)


def value_column(driver: Any, name: str) -> list[str]:
    """The texts of the runs table's column headed ``name`` (a filter's value column), top to bottom."""
    return settle(driver, lambda d: d.execute_script(
        "const heads = [...document.querySelectorAll('#runs-table thead th')];"
        "const i = heads.findIndex(h => h.dataset.sort === 'v:' + arguments[0]);"
        "return i < 0 ? null : [...document.querySelectorAll('#runs-table tbody tr[data-id]')]"
        "  .map(r => r.children[i].textContent)", name))


# -- the filter box --------------------------------------------------------------------------------------------


def test_filter_box_narrows_the_list_and_the_url_keeps_it(driver: Any, server: str, database: SweepDatabase) -> None:
    sweep = database.sweep
    open_fresh(driver, server + "/", "runs")
    everything = set(row_ids(driver))
    assert set(sweep) | set(database.categorical) | {database.system} == everything

    expression, order = "params.lr >= 0.01 and metrics.val_sharpe > 0.5", "metrics.val_sharpe desc"
    apply_filter(driver, expression, order)
    expected = sorted((r for r, s in sweep.items() if s["lr"] >= 0.01 and s["val_sharpe"] > 0.5),
                      key=lambda r: -sweep[r]["val_sharpe"])
    assert 0 < len(expected) < len(sweep)
    assert row_ids(driver) == expected  # narrowed, in the order asked for
    assert driver.find_element(By.ID, "run-count").text == f"{len(expected)} runs"
    shown = value_column(driver, "metrics.val_sharpe")
    assert [float(v) for v in shown] == pytest.approx([sweep[r]["val_sharpe"] for r in expected], rel=1e-4)
    assert hash_params(driver) == {"filter": [expression], "order": [order]}
    assert error_box(driver) == ""
    docs_screenshot(driver, "filter.png", down_to="#runs-table")

    # The URL alone gives the same view: a new page load, the same boxes, rows and order.
    url = driver.current_url
    open_fresh(driver, url, "runs")
    assert driver.find_element(By.ID, "filter").get_attribute("value") == expression
    assert driver.find_element(By.ID, "order").get_attribute("value") == order
    assert row_ids(driver) == expected

    # The list's own controls still narrow a filtered list.
    before = updated(driver)
    Select(driver.find_element(By.ID, "filter-type")).select_by_value("sl")
    wait_page(driver, "runs", before)
    assert row_ids(driver) == []
    assert "No runs match these filters." in driver.find_element(By.ID, "runs-table").text
    assert hash_params(driver)["type"] == ["sl"] and hash_params(driver)["filter"] == [expression]

    # Clear: every run again, and a clean URL.
    before = updated(driver)
    Select(driver.find_element(By.ID, "filter-type")).select_by_value("")
    wait_page(driver, "runs", before)
    before = updated(driver)
    driver.find_element(By.ID, "filter-clear").click()
    wait_page(driver, "runs", before)
    assert set(row_ids(driver)) == everything and hash_params(driver) == {}


def test_a_malformed_filter_shows_where(driver: Any, server: str, database: SweepDatabase) -> None:
    open_fresh(driver, server + "/", "runs")
    expression = "params.lr >= and metrics.val_sharpe > 1"
    apply_filter(driver, expression)
    box = wait(driver, lambda d: d.find_element(By.ID, "filter-error") if d.find_element(By.ID, "filter-error")
               .is_displayed() else None, "the filter error")
    assert box.get_attribute("data-position") == "13"
    text = box.find_element(By.CSS_SELECTOR, "pre.filter-message").text
    line, caret = text.splitlines()[-2:]
    assert line.strip() == expression and caret.index("^") - line.index("p") == 13
    assert driver.find_element(By.ID, "filter").get_attribute("aria-invalid") == "true"
    # never a silent empty list: the table says why it is empty
    assert "the filter above has an error" in driver.find_element(By.ID, "runs-table").text
    assert js(driver, "return document.activeElement.id") == "filter"
    assert js(driver, "return document.getElementById('filter').selectionStart") == 13
    # the broken filter is in the URL too, and loading it shows the same error
    open_fresh(driver, driver.current_url, "runs")
    assert driver.find_element(By.ID, "filter-error").get_attribute("data-position") == "13"
    # a bad order points into the order box
    apply_filter(driver, "tags.sweep", "metrics.val_sharpe sideways")
    wait(driver, lambda d: d.find_element(By.ID, "order").get_attribute("aria-invalid") == "true", "order marked")
    assert driver.find_element(By.ID, "filter-error").get_attribute("data-what") == "order"
    # fixed: the error goes, the runs come back
    apply_filter(driver, "tags.sweep", "metrics.val_sharpe")
    assert len(row_ids(driver)) == len(database.sweep)
    assert not driver.find_element(By.ID, "filter-error").is_displayed()
    driver.get_log("browser")  # the 400s are logged by the browser itself: expected here


# -- the sweep view --------------------------------------------------------------------------------------------


def parcoords(driver: Any) -> dict[str, Any]:
    return js(driver, "const g = document.getElementById('sweep-parcoords'); const t = g.data[0];"
                      "return {labels: t.dimensions.map(d => d.label), values: t.dimensions.map(d => d.values),"
                      "ticktext: t.dimensions.map(d => d.ticktext || null), color: t.line.color, type: t.type}")


def scatter(driver: Any) -> dict[str, Any]:
    return js(driver, "const g = document.getElementById('sweep-scatter'); const t = g.data[0];"
                      "return {x: t.x, y: t.y, ids: t.customdata, type: t.type, mode: t.mode,"
                      "xtype: g.layout.xaxis.type}")


def sweep_rows(driver: Any) -> list[int]:
    return [int(r.get_attribute("data-id")) for r in driver.find_elements(By.CSS_SELECTOR, "#sweep-table tbody tr[data-id]")]


def test_sweep_view_of_a_filtered_list(driver: Any, server: str, database: SweepDatabase) -> None:
    sweep = database.sweep
    open_fresh(driver, server + "/#/?filter=" + quote("tags.sweep"), "runs")
    assert sorted(row_ids(driver)) == sorted(sweep)
    before = updated(driver)
    driver.find_element(By.ID, "sweep-button").click()
    wait_page(driver, "sweep", before)
    assert hash_params(driver)["filter"] == ["tags.sweep"]
    assert hash_params(driver)["metric"] == ["train_loss"]  # the default: most points, shared by all 12

    before = updated(driver)
    Select(driver.find_element(By.ID, "sweep-metric")).select_by_value("val_sharpe")
    wait_page(driver, "sweep", before)

    # Parallel coordinates: a line per run, the hyperparameters that differ, the metric last and colored.
    chart = parcoords(driver)
    assert chart["type"] == "parcoords"
    assert chart["labels"] == ["batch_size", "gamma", "lr (log)", "val_sharpe (last)"]  # epochs is 8 in all: no axis
    assert all(len(v) == len(sweep) for v in chart["values"])
    by_value = sorted(zip(chart["values"][3], chart["values"][0], chart["values"][1], chart["values"][2]))
    expected = sorted((s["val_sharpe"], s["batch_size"], s["gamma"], s["lr"]) for s in sweep.values())
    assert [row[0] for row in by_value] == pytest.approx([row[0] for row in expected])
    assert [(b, g, round(10 ** lr, 6)) for _, b, g, lr in by_value] == [(b, g, lr) for _, b, g, lr in expected]
    assert chart["color"] == chart["values"][3]
    assert chart["ticktext"][2] == ["0.001", "0.01", "0.1"]
    assert js(driver, "return document.querySelectorAll('#sweep-parcoords .no-webgl').length") == 0  # drawn, not refused

    # The scatter: one point per run, against the hyperparameter that goes most with the metric (lr here).
    points = scatter(driver)
    assert Select(driver.find_element(By.ID, "sweep-x")).first_selected_option.get_attribute("value") == "lr"
    assert (points["type"], points["mode"], points["xtype"]) == ("scatter", "markers", "log")
    assert sorted(points["ids"]) == sorted(sweep) and len(points["x"]) == len(sweep)
    for run_id, x, y in zip(points["ids"], points["x"], points["y"]):
        assert (x, y) == (sweep[run_id]["lr"], pytest.approx(sweep[run_id]["val_sharpe"]))

    # The table: every run, best first.
    best_first = sorted(sweep, key=lambda r: -sweep[r]["val_sharpe"])
    assert sweep_rows(driver) == best_first
    assert driver.find_element(By.ID, "sweep-summary").text.startswith("12 runs · 12 with val_sharpe (last)")
    docs_screenshot(driver, "sweep.png", down_to=".sweep-lower")

    # Another scatter parameter and aggregate, the table flipped: all of it in the URL, and back from it.
    before = updated(driver)
    Select(driver.find_element(By.ID, "sweep-x")).select_by_value("gamma")
    wait_page(driver, "sweep", before)
    assert sorted(set(scatter(driver)["x"])) == [0.9, 0.99]
    before = updated(driver)
    driver.find_element(By.ID, "sweep-sort").click()
    wait_page(driver, "sweep", before)
    assert sweep_rows(driver) == best_first[::-1]
    before = updated(driver)
    Select(driver.find_element(By.ID, "sweep-agg")).select_by_value("max")
    wait_page(driver, "sweep", before)
    assert hash_params(driver) == {"filter": ["tags.sweep"], "metric": ["val_sharpe"], "agg": ["max"], "x": ["gamma"],
                                   "dir": ["asc"]}
    url = driver.current_url
    maxima = parcoords(driver)["values"][3]
    open_fresh(driver, url, "sweep")
    assert Select(driver.find_element(By.ID, "sweep-agg")).first_selected_option.get_attribute("value") == "max"
    assert scatter(driver)["xtype"] == "linear" and sorted(set(scatter(driver)["x"])) == [0.9, 0.99]
    assert parcoords(driver)["values"][3] == maxima
    assert parcoords(driver)["labels"][-1] == "val_sharpe (max)"
    assert error_box(driver) == ""


def test_sweep_of_ticked_runs(driver: Any, server: str, database: SweepDatabase) -> None:
    chosen = sorted(database.sweep)[:3]
    open_fresh(driver, server + "/", "runs")
    for run_id in chosen:
        check = f"input.compare-check[data-id='{run_id}']"
        settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, check).click())
        assert settle(driver, lambda d: d.find_element(By.CSS_SELECTOR, check).is_selected())
    assert driver.find_element(By.ID, "sweep-button").text == "Sweep (3)"
    before = updated(driver)
    driver.find_element(By.ID, "sweep-button").click()
    wait_page(driver, "sweep", before)
    assert hash_params(driver)["ids"] == [",".join(map(str, chosen))]
    assert sorted(sweep_rows(driver)) == chosen
    assert len(parcoords(driver)["values"][0]) == 3


def test_sweep_text_parameters_are_category_axes_and_stay_text(driver: Any, server: str,
                                                                database: SweepDatabase) -> None:
    open_fresh(driver, server + "/#/sweep?filter=" + quote("tags.cat") + "&metric=accuracy&x=optimizer", "sweep")
    chart = parcoords(driver)
    # a parameter name is a label Plotly reads as markup: escaped, so it shows as the text it is
    assert chart["labels"] == ["&lt;i&gt;depth&lt;/i&gt;", "optimizer", "width", "accuracy (last)"]
    labels = js(driver, "return [...document.querySelectorAll('#sweep-parcoords text.axis-title')].map(t => t.textContent)")
    assert labels == ["<i>depth</i>", "optimizer", "width", "accuracy (last)"]
    # categories sorted as text, the run without one on "(unset)"; tick texts are plain text to Plotly's parcoords
    assert chart["ticktext"][1] == ["<b>adam</b>", "sgd", "(unset)"]
    assert sorted(chart["values"][1]) == [0, 1, 1, 2]
    shown = js(driver, "return [...document.querySelectorAll('#sweep-parcoords text')].map(t => t.textContent)")
    assert "<b>adam</b>" in shown and "(unset)" in shown
    assert js(driver, "return document.querySelectorAll('#app b, #app i, #app script').length") == 0
    points = scatter(driver)
    assert points["xtype"] == "category" and len(points["x"]) == 4
    assert sorted(points["x"]) == sorted(["&lt;b&gt;adam&lt;/b&gt;", "sgd", "sgd", "(unset)"])


# -- the run page ----------------------------------------------------------------------------------------------


def test_system_panel(driver: Any, server: str, database: SweepDatabase) -> None:
    open_fresh(driver, f"{server}/#/run/{database.system}", "run")
    panel = driver.find_element(By.ID, "system")
    assert panel.is_displayed() and panel.find_element(By.TAG_NAME, "h2").text == "System"
    names = [c.get_attribute("data-metric") for c in panel.find_elements(By.CSS_SELECTOR, "div.chart")]
    assert sorted(names) == sorted(database.system_metrics) and "system/cpu_percent" in names
    ordinary = [c.get_attribute("data-metric") for c in driver.find_elements(By.CSS_SELECTOR, "#charts div.chart")]
    assert ordinary == ["loss"]  # system metrics are not among the ordinary charts
    cpu = "#system div.chart[data-metric='system/cpu_percent']"
    wait(driver, lambda d: js(d, f"const g = document.querySelector(\"{cpu}\"); return g.data && g.data[0].x.length")
         >= 20, "the CPU samples")
    assert js(driver, f"return document.querySelector(\"{cpu}\").layout.xaxis.type") == "date"
    assert js(driver, f"return document.querySelector(\"{cpu}\").dataset.axis") == "time"
    xs = js(driver, f"return document.querySelector(\"{cpu}\").data[0].x")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", x) for x in xs) and xs == sorted(xs)
    docs_screenshot(driver, "system.png", down_to="#system")

    # a run without system metrics has no System panel
    plain = min(database.sweep)
    open_fresh(driver, f"{server}/#/run/{plain}", "run")
    assert not driver.find_element(By.ID, "system").is_displayed()
    assert not driver.find_elements(By.CSS_SELECTOR, "#system div.chart")
    assert {"train_loss", "val_sharpe", "weight"} == {
        c.get_attribute("data-metric") for c in driver.find_elements(By.CSS_SELECTOR, "#charts div.chart")}


def test_model_aliases_are_badges(driver: Any, server: str, database: SweepDatabase) -> None:
    open_fresh(driver, f"{server}/#/run/{database.best}", "run")
    row = driver.find_element(By.CSS_SELECTOR, f"#models tr[data-id='{database.models[database.best]}']")
    assert [b.text for b in row.find_elements(By.CSS_SELECTOR, ".alias")] == ["champion", "production"]
    other = min(r for r in database.sweep if r != database.best)
    open_fresh(driver, f"{server}/#/run/{other}", "run")
    cell = driver.find_element(By.CSS_SELECTOR, f"#models tr[data-id='{database.models[other]}'] td.aliases")
    assert cell.text == "—" and not cell.find_elements(By.CSS_SELECTOR, ".alias")
