"""ml_persistence.export: every table in every format, read back with pandas and compared with sqlite3.

The data is written through the library; the only hand-made rows are a value SQLite's dynamic typing
lets into an INTEGER column, and the two million metric rows of the streaming test (SQL is the fast
way to make them). Memory is measured in child processes; nothing waits on the clock.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
import warnings
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PYTHON, rows, subprocess_env
from ml_persistence import DatasetManager, ExperimentTracker, ModelRegistry
from ml_persistence.export import FORMATS, WHATS, ExportError, export_columns, export_rows

TRICKY = 'naïve, "quoted" 日本語\nsecond line\r\nthird; tab\t🚀'
NAN, INF = math.nan, math.inf
MISSING = "<missing>"


# -- data -----------------------------------------------------------------------------------------


def populate(db: str) -> None:
    """Two experiments with everything the tracker records, and awkward text and numbers throughout."""
    t, reg, ds = ExperimentTracker(db), ModelRegistry(db), DatasetManager(db)
    e1 = t.start_experiment(
        f"exp one, {TRICKY}", experiment_type="rl", description='desc "q", x',
        tags=["a,b", 'q"t', "ü"], random_seed=7, metadata={"k": [1, 2], "s": TRICKY},
    )
    t.log_hyperparameters_batch({"lr": 0.001, "layers": 3, "name": TRICKY, "flag": True, "sched": None})
    t.log_metrics_batch({"loss": 0.1, "acc": 1 / 3}, step=1, epoch=0, split="train")
    t.log_metrics_batch({"loss": NAN, "acc": INF}, step=2, split="train")
    t.log_metrics_batch({"loss": -INF, "acc": -0.0}, step=3, split="val")
    t.log_metrics_batch({"loss": 1e308, "acc": -2.5}, step=2**53, episode=-4)
    t.log_metric("confusion", 0.5, value_json={"matrix": [[1, 0], [0, 1]], "label": TRICKY},
                 metadata={"note": "x"}, phase="eval")
    t.log_metric(f"odd name, {TRICKY}", 42, step=5)
    m1 = reg.register_model(e1, "ckpt/best.pt", architecture_type="mlp", val_metric=0.9, test_metric=INF,
                            is_best=True, hyperparameters={"h": 1}, metadata={"m": TRICKY})
    reg.register_model(e1, "ckpt/last.pt", version="v2", state_dim=4, action_dim=2, val_metric=0.95,
                       train_metric=-INF)
    t.log_metric("loss", 0.05, step=4, model_id=m1)
    train = ds.register_dataset("prices, daily", "1", split_type="train", feature_columns=["open", "close"],
                                target_columns="y", metadata={"src": TRICKY}, num_samples=1000,
                                start_date="2020-01-01")
    test = ds.register_dataset("prices, daily", "1", split_type="test")
    ds.register_dataset("unlinked ü", "2")
    ds.link_dataset_to_experiment(e1, train, "train")
    ds.link_dataset_to_experiment(e1, test, "test")
    t.log_artifact("plots/loss.png", description=TRICKY, metadata={"dpi": 100})
    t.end_experiment("completed", notes=TRICKY)

    e2 = t.start_experiment("exp two")
    t.log_hyperparameters_batch({"lr": 0.01})
    t.log_metrics_batch({"loss": 0.5, "acc": 0.7}, step=1)
    reg.register_model(e2, "two.pt")
    ds.link_dataset_to_experiment(e2, train, "train")
    t.log_artifact("two/report.txt")
    for writer in (t, reg, ds):
        writer.flush()


@pytest.fixture
def db(db_path: str) -> str:
    populate(db_path)
    return db_path


def populate_ids(db: str) -> dict[str, int]:
    (e1,), (e2,) = rows(db, "SELECT id FROM experiments ORDER BY id")
    return {"e1": e1, "e2": e2}


def connect(db: str) -> sqlite3.Connection:
    """Open the database read-only, as the CLI's caller does."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def export(db: str, what: str, fmt: str, **kwargs: Any) -> tuple[bytes, int]:
    conn = connect(db)
    try:
        out = io.BytesIO()
        count = export_rows(conn, what, out, fmt, **kwargs)
        return out.getvalue(), count
    finally:
        conn.close()


# -- what sqlite3 says, independently of export.py ----------------------------------------------

EXPECTED_SQL = {
    "experiments": "SELECT e.*, s.num_checkpoints, s.best_val_metric, s.best_test_metric "
                   "FROM experiments e JOIN experiment_summary s ON s.id = e.id ORDER BY e.id",
    "metrics": "SELECT * FROM metrics ORDER BY id",
    "models": "SELECT * FROM models ORDER BY id",
    "hyperparameters": "SELECT * FROM hyperparameters ORDER BY id",
    "artifacts": "SELECT * FROM artifacts ORDER BY id",
    "datasets": "SELECT d.*, ed.experiment_id, ed.usage_type FROM datasets d "
                "LEFT JOIN experiment_datasets ed ON ed.dataset_id = d.id ORDER BY d.id, ed.experiment_id, ed.usage_type",
}


def expected(db: str, what: str, ids: Sequence[int] = (), names: Sequence[str] = ()) -> tuple[list[str], list[tuple]]:
    """(columns, rows) straight from sqlite3, filtered in Python."""
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute(EXPECTED_SQL[what])
        columns = [d[0] for d in cursor.description]
        found = cursor.fetchall()
    finally:
        conn.close()
    key = "id" if what == "experiments" else "experiment_id"
    if ids:
        found = [r for r in found if r[columns.index(key)] in ids]
    if names:
        found = [r for r in found if r[columns.index("metric_name")] in names]
    return columns, found


def kinds(db: str, what: str) -> dict[str, str]:
    """Column -> 'int', 'real' or 'text', from the declared types (as a user reading an export would)."""
    table = "datasets" if what == "datasets" else what
    declared = {r[1]: r[2].upper() for r in rows(db, f"PRAGMA table_info({table})")}
    declared.update({"num_checkpoints": "INTEGER", "best_val_metric": "REAL", "best_test_metric": "REAL"}
                    if what == "experiments" else {})
    declared.update({"experiment_id": "INTEGER", "usage_type": "TEXT"} if what == "datasets" else {})
    return {c: "int" if "INT" in d else "real" if "REAL" in d else "text" for c, d in declared.items()}


# pandas 2 turns a missing value into the text "None" under dtype "str"; its "string" keeps it missing.
PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3
TEXT = "str" if PANDAS_3 else "string"
# pandas 2's C parser rounds some floats unless asked for exact round trips (pandas 3's default).
CSV_EXACT: dict[str, str] = {} if PANDAS_3 else {"float_precision": "round_trip"}


def read_back(fmt: str, data: bytes, column_kinds: dict[str, str]) -> pd.DataFrame:
    """Read an export with pandas, telling it the column types (text that looks numeric stays text)."""
    dtype = {c: {"int": "Int64", "real": "float64", "text": TEXT}[k] for c, k in column_kinds.items()}
    if fmt == "csv":
        # Only empty cells are missing, and "nan" in numeric columns: text like "None" or "NA" stays text.
        na = {c: ["", "nan"] if k != "text" else [""] for c, k in column_kinds.items()}
        return pd.read_csv(io.BytesIO(data), dtype=dtype, keep_default_na=False, na_values=na, **CSV_EXACT)
    if fmt == "jsonl":
        with warnings.catch_warnings():
            # pandas 3 deprecates it but still turns *_at/timestamp text into datetimes without it.
            warnings.filterwarnings("ignore", message=".*keep_default_dates")
            return pd.read_json(io.BytesIO(data), lines=True, dtype=dtype, precise_float=True,
                                keep_default_dates=False)
    return pd.read_parquet(io.BytesIO(data))


def cell(value: Any) -> Any:
    """One value, with every spelling of missing (None, NaN, NA, NaT) made the same."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return value


def frame_rows(df: pd.DataFrame) -> list[tuple]:
    return [tuple(cell(v) for v in row) for row in df.astype(object).itertuples(index=False, name=None)]


def assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w
        for a, b in zip(g, w):  # == says 1 == 1.0 and 0.0 == -0.0; the exact value must come back
            if isinstance(b, float):
                assert isinstance(a, float) and math.copysign(1, a) == math.copysign(1, b), (a, b)


def same_parquet(a: bytes, b: bytes) -> bool:
    """Equal schemas and values, NaN equal to NaN (Arrow's Table.equals says NaN != NaN)."""
    ta, tb = pq.read_table(io.BytesIO(a)), pq.read_table(io.BytesIO(b))
    return ta.schema.equals(tb.schema) and ta.to_pandas().equals(tb.to_pandas())


# -- round trips ----------------------------------------------------------------------------------

FILTERS = {"all": {}, "e2": {"ids": ("e2",)}, "both": {"ids": ("e1", "e2")}}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("what", WHATS)
@pytest.mark.parametrize("scope", FILTERS)
def test_round_trip_through_pandas(db: str, what: str, fmt: str, scope: str) -> None:
    ids = populate_ids(db)
    experiment_ids = [ids[k] for k in FILTERS[scope].get("ids", ())]
    data, count = export(db, what, fmt, experiment_ids=experiment_ids)
    columns, want = expected(db, what, experiment_ids)
    df = read_back(fmt, data, kinds(db, what))
    assert list(df.columns) == columns == export_columns(connect(db), what)
    assert count == len(df) == len(want) > 0
    want = [tuple(cell(v) for v in r) for r in want]
    if fmt == "csv":  # CSV has one spelling for NULL and the empty string
        want = [tuple(MISSING if v == "" else v for v in r) for r in want]
    assert_same(frame_rows(df), want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "ids, names",
    [((), ("loss",)), ((), ("acc", f"odd name, {TRICKY}")), (("e1",), ("loss",)), (("e2", "e1"), ("acc", "nope"))],
)
def test_metric_filters(db: str, fmt: str, ids: tuple[str, ...], names: tuple[str, ...]) -> None:
    known = populate_ids(db)
    experiment_ids = [known[k] for k in ids]
    data, count = export(db, "metrics", fmt, experiment_ids=experiment_ids, metric_names=names)
    _, want = expected(db, "metrics", experiment_ids, names)
    df = read_back(fmt, data, kinds(db, "metrics"))
    assert count == len(df) == len(want) > 0
    assert_same(frame_rows(df), [tuple(cell(v) for v in r) for r in want])


def test_filters_that_match_nothing_write_only_a_header(db: str) -> None:
    assert export(db, "metrics", "csv", experiment_ids=[999]) == (
        (",".join(export_columns(connect(db), "metrics")) + "\n").encode(), 0)
    assert export(db, "metrics", "jsonl", metric_names=["nope"]) == (b"", 0)
    data, count = export(db, "models", "parquet", experiment_ids=[999])
    assert count == 0 and pq.read_table(io.BytesIO(data)).num_rows == 0


def test_datasets_one_row_per_link_and_unlinked_once(db: str) -> None:
    ids = populate_ids(db)
    data, _ = export(db, "datasets", "jsonl")
    got = [(r["name"], r["split_type"], r["experiment_id"], r["usage_type"]) for r in map(json.loads, data.splitlines())]
    assert got == [
        ("prices, daily", "train", ids["e1"], "train"),
        ("prices, daily", "train", ids["e2"], "train"),
        ("prices, daily", "test", ids["e1"], "test"),
        ("unlinked ü", None, None, None),
    ]
    data, count = export(db, "datasets", "jsonl", experiment_ids=[ids["e2"]])
    assert count == 1 and json.loads(data)["experiment_id"] == ids["e2"]


def test_experiment_figures(db: str) -> None:
    data, _ = export(db, "experiments", "jsonl")
    e1, e2 = map(json.loads, data.splitlines())
    # e1's best-marked model has val 0.9 (its other model has 0.95) and test +inf.
    assert (e1["num_checkpoints"], e1["best_val_metric"], e1["best_test_metric"]) == (2, 0.9, "Infinity")
    assert (e2["num_checkpoints"], e2["best_val_metric"], e2["best_test_metric"]) == (1, None, None)


# -- what each format writes ----------------------------------------------------------------------


def test_csv_cells(db: str) -> None:
    data, _ = export(db, "metrics", "csv", experiment_ids=[populate_ids(db)["e1"]])
    text = data.decode("utf-8")
    assert TRICKY in text.replace('""', '"')
    table = list(csv.reader(io.StringIO(text, newline="")))
    header, body = table[0], table[1:]
    by_name = {(r[header.index("metric_name")], r[header.index("step")]): r for r in body}
    value, model_id = header.index("value"), header.index("model_id")
    assert by_name[("loss", "2")][value] == "nan"  # NULL in metrics.value means NaN
    assert by_name[("acc", "2")][value] == "inf"
    assert by_name[("loss", "3")][value] == "-inf"
    assert by_name[("acc", "1")][value] == repr(1 / 3)
    assert by_name[("loss", "2")][model_id] == ""  # any other NULL is an empty cell
    assert by_name[(f"odd name, {TRICKY}", "5")][value] == "42.0"


def test_jsonl_is_strict_json(db: str) -> None:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    data, _ = export(db, "metrics", "jsonl", experiment_ids=[populate_ids(db)["e1"]])
    lines = [json.loads(line, parse_constant=refuse) for line in data.decode("utf-8").splitlines()]
    values = {(r["metric_name"], r["step"]): r["value"] for r in lines}
    assert values[("loss", 2)] is None  # NaN
    assert values[("acc", 2)] == "Infinity" and values[("loss", 3)] == "-Infinity"
    assert values[("acc", 1)] == 1 / 3
    stored = dict(rows(db, "SELECT id, value_json FROM metrics"))
    assert all(r["value_json"] == stored[r["id"]] for r in lines)  # JSON text stays text
    assert any(r["value_json"] and json.loads(r["value_json"])["label"] == TRICKY for r in lines)

    data, _ = export(db, "experiments", "jsonl")
    first = json.loads(data.splitlines()[0], parse_constant=refuse)
    tags, metadata = rows(db, "SELECT tags, metadata FROM experiments ORDER BY id")[0]
    assert (first["tags"], first["metadata"], first["notes"]) == (tags, metadata, TRICKY)


def test_parquet_types_and_nan(db: str) -> None:
    data, _ = export(db, "metrics", "parquet", experiment_ids=[populate_ids(db)["e1"]])
    table = pq.read_table(io.BytesIO(data))
    types = {f.name: str(f.type) for f in table.schema}
    assert (types["id"], types["step"], types["value"], types["timestamp"], types["metric_name"]) == (
        "int64", "int64", "double", "string", "string")
    assert table.column("value").null_count == 0  # NaN, not null
    values = dict(zip(zip(table.column("metric_name").to_pylist(), table.column("step").to_pylist()),
                      table.column("value").to_pylist()))
    assert math.isnan(values[("loss", 2)]) and values[("acc", 2)] == INF and values[("loss", 3)] == -INF
    assert table.column("model_id").null_count > 0  # other NULLs stay null


def test_numbers_survive_exactly(db_path: str) -> None:
    """Subnormals, the float extremes and int64 limits, read back with plain parsers (no pandas)."""
    values = [5e-324, 1e-320, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1 + 0.2, -1.5e-7]
    steps = [2**63 - 1, -(2**63), 2**53 + 1, 0, -1, 7]
    t = ExperimentTracker(db_path)
    t.start_experiment("numbers")
    for value, step in zip(values, steps):
        t.log_metric("v", value, step=step)
    t.flush()
    want = list(zip(steps, values))

    data, _ = export(db_path, "metrics", "csv")
    table = list(csv.DictReader(io.StringIO(data.decode())))
    assert [(int(r["step"]), float(r["value"])) for r in table] == want
    data, _ = export(db_path, "metrics", "jsonl")
    assert [(r["step"], r["value"]) for r in map(json.loads, data.splitlines())] == want
    data, _ = export(db_path, "metrics", "parquet")
    table = pq.read_table(io.BytesIO(data))
    assert list(zip(table.column("step").to_pylist(), table.column("value").to_pylist())) == want


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_size_does_not_change_the_output(db: str, fmt: str) -> None:
    whole, count = export(db, "metrics", fmt)
    for batch_rows in (1, 2, 3):
        data, n = export(db, "metrics", fmt, batch_rows=batch_rows)
        assert n == count
        if fmt == "parquet":  # one row group per batch
            assert pq.ParquetFile(io.BytesIO(data)).num_row_groups == math.ceil(count / batch_rows)
            assert same_parquet(data, whole)
        else:
            assert data == whole


def test_row_factory_of_the_connection_is_ignored(db: str) -> None:
    conn = connect(db)
    conn.row_factory = sqlite3.Row
    for fmt in FORMATS:
        out = io.BytesIO()
        export_rows(conn, "models", out, fmt)
        assert out.getvalue() == export(db, "models", fmt)[0]


# -- pipes, missing pyarrow, values that do not fit ----------------------------------------------

PIPE_CHILD = """
import sqlite3, sys
from ml_persistence.export import export_rows
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(sys.stdout.buffer.seekable(), export_rows(conn, sys.argv[2], sys.stdout.buffer, sys.argv[3]), file=sys.stderr)
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_to_stdout_pipe(db: str, fmt: str) -> None:
    done = subprocess.run([PYTHON, "-c", PIPE_CHILD, db, "metrics", fmt], capture_output=True,
                          env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    seekable, count = done.stderr.decode().split()
    here, expected_count = export(db, "metrics", fmt)
    assert (seekable, int(count)) == ("False", expected_count)
    if fmt == "parquet":
        assert same_parquet(done.stdout, here)
    else:
        assert done.stdout == here


def test_parquet_to_an_os_pipe_in_process(db: str) -> None:
    read_fd, write_fd = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(os.fdopen(read_fd, "rb").read()))
    reader.start()
    with open(write_fd, "wb", buffering=0) as out:  # raw and unseekable: pyarrow cannot tell() it
        assert not out.seekable()
        count = export_rows(connect(db), "metrics", out, "parquet", batch_rows=2)
    reader.join()
    assert pq.read_table(io.BytesIO(received[0])).num_rows == count > 0


def test_parquet_without_pyarrow(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` sees when it is not installed
    out = io.BytesIO()
    with pytest.raises(ExportError, match=r"pip install 'ml_persistence\[parquet\]'"):
        export_rows(connect(db), "metrics", out, "parquet")
    assert out.getvalue() == b""
    assert export(db, "metrics", "csv")[1] > 0  # the other formats need nothing extra


def test_parquet_refuses_a_value_that_does_not_fit_its_column(db: str) -> None:
    conn = sqlite3.connect(db)
    (bad,) = conn.execute("SELECT max(id) FROM metrics WHERE metric_name = 'acc'").fetchone()
    conn.execute("UPDATE metrics SET step = 'twelve' WHERE id = ?", (bad,))  # INTEGER affinity keeps text
    conn.commit()
    conn.close()
    out = io.BytesIO()
    with pytest.raises(ExportError, match=rf"metrics\.step of row id {bad} holds str 'twelve'.*csv or jsonl"):
        export_rows(connect(db), "metrics", out, "parquet", batch_rows=1)
    assert out.getvalue().startswith(b"PAR1") and not out.getvalue().endswith(b"PAR1")  # no footer
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(io.BytesIO(out.getvalue()))
    assert b"twelve" in export(db, "metrics", "csv")[0]
    assert b'"step":"twelve"' in export(db, "metrics", "jsonl")[0]


def test_bad_arguments(db: str) -> None:
    conn, out = connect(db), io.BytesIO()
    with pytest.raises(ValueError, match="experiments, metrics, models, hyperparameters, datasets, artifacts"):
        export_rows(conn, "runs", out, "csv")
    with pytest.raises(ValueError, match="csv, jsonl, parquet"):
        export_rows(conn, "metrics", out, "xlsx")
    with pytest.raises(ValueError, match="experiments, metrics"):
        export_columns(conn, "metrics; DROP TABLE metrics")
    with pytest.raises(ValueError, match="metric_names"):
        export_rows(conn, "models", out, "csv", metric_names=["loss"])
    with pytest.raises(TypeError, match="experiment_ids"):
        export_rows(conn, "metrics", out, "csv", experiment_ids=["1 OR 1=1"])
    with pytest.raises(TypeError, match="metric_names"):
        export_rows(conn, "metrics", out, "csv", metric_names=[1])
    with pytest.raises(ValueError, match="batch_rows"):
        export_rows(conn, "metrics", out, "csv", batch_rows=0)
    assert out.getvalue() == b""
    # A single name is taken as one name, not as its letters.
    assert export(db, "metrics", "csv", metric_names="loss") == export(db, "metrics", "csv", metric_names=["loss"])


def test_queries_stream_in_id_order_without_a_sort(db: str) -> None:
    """A temp B-tree for ORDER BY would hold every selected row before the first one comes out."""
    from ml_persistence.sqlite.reads import Reader

    conn = connect(db)
    reader = Reader(conn, db)
    for what in ("experiments", "metrics", "models", "hyperparameters", "artifacts"):
        for ids in (None, [1, 2]):
            for names in (None, ["loss"]) if what == "metrics" else (None,):
                for fmt in FORMATS:
                    sql, params = reader.export_sql(what, ids, names, fmt == "csv", fmt == "jsonl")
                    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
                    assert not [p for p in plan if "TEMP B-TREE" in p], (what, ids, names, plan)
                    if what == "metrics":
                        assert plan[0] in ("SCAN t", "SEARCH t USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)")


# -- memory stays flat ------------------------------------------------------------------------------

MEMORY_CHILD = """
import io, json, resource, sqlite3, sys
from ml_persistence.export import export_rows

def peak_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (big) pytest parent.
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024

db, fmt, out_path, small_id = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
export_rows(conn, "experiments", io.BytesIO(), fmt)  # imports and one-time set-up (pyarrow's ~40 MiB) land in the baseline
base = peak_mib()
with open(out_path, "wb") as out:
    small = export_rows(conn, "metrics", out, fmt, experiment_ids=[small_id])
after_small = peak_mib()
with open(out_path, "wb") as out:
    big = export_rows(conn, "metrics", out, fmt)
print(json.dumps({"base": base, "small_peak": after_small, "big_peak": peak_mib(), "small": small, "big": big,
                  "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BIG, SMALL = 1_900_000, 100_000

FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO metrics (experiment_id, metric_name, metric_type, step, value, split, timestamp)
SELECT ?, 'train_loss', 'scalar', i, i * 0.000123456789, 'train', '2024-05-01 12:00:00.000000' FROM n
"""


def count_lines(path: str) -> int:
    lines = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
    return lines


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_memory_stays_flat_for_two_million_rows(db_path: str, tmp_path: Any) -> None:
    t = ExperimentTracker(db_path, capture_environment=False)
    big_id = t.start_experiment("big")
    small_id = t.start_experiment("small")
    t.flush()
    conn = sqlite3.connect(db_path)
    conn.execute(FILL, (BIG, big_id))
    conn.execute(FILL, (SMALL, small_id))  # after the big one: its ids form one short span
    conn.commit()
    conn.close()

    outputs = {fmt: tmp_path / f"out.{fmt}" for fmt in FORMATS}
    children = {
        fmt: subprocess.Popen(
            [PYTHON, "-c", MEMORY_CHILD, db_path, fmt, str(outputs[fmt]), str(small_id)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
        )
        for fmt in FORMATS
    }
    try:
        figures = {}
        for fmt, child in children.items():
            stdout, stderr = child.communicate(timeout=300)
            assert child.returncode == 0, stderr.decode()
            figures[fmt] = json.loads(stdout)
        check_flat(figures, outputs)
    finally:
        for path in outputs.values():  # ~770 MB, and pytest keeps the last few tmp dirs around
            path.unlink(missing_ok=True)


def check_flat(figures: dict[str, dict[str, Any]], outputs: dict[str, Any]) -> None:
    """Peak RSS does not grow with the row count, and every row was written."""
    # Holding the rows would cost about 1 GiB: fetchall() of these 2M rows grows RSS by ~1030 MiB
    # (a 14-tuple plus its int, float and str objects is ~540 bytes a row). Streaming costs one
    # batch (50,000 rows, ~27 MiB of Python objects) plus the format's buffers: measured here at
    # 55 MiB (csv), 54 (jsonl), 85 (parquet) over the baseline, the same for 100k rows as for 2M.
    for fmt, f in figures.items():
        assert (f["small"], f["big"]) == (SMALL, BIG + SMALL), fmt
        assert f["big_peak"] - f["small_peak"] < 24, (fmt, f)  # 20x the rows, (almost) no more memory
        assert f["big_peak"] - f["base"] < 150, (fmt, f)  # an order of magnitude under holding the rows
    assert count_lines(str(outputs["csv"])) == BIG + SMALL + 1
    assert count_lines(str(outputs["jsonl"])) == BIG + SMALL
    assert pq.ParquetFile(str(outputs["parquet"])).metadata.num_rows == BIG + SMALL
