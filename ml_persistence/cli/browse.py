"""Reading commands: ls, show, compare, best, metrics."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from contextlib import closing
from typing import Any, Iterator

from .. import liveness, storage
from ..compare import default_metric, hyperparameter_grid
from . import arguments, selection
from . import output as out
from .database import CLIError, USAGE, experiment, open_read



def _cell(value: Any) -> str:
    return out.number(value) if isinstance(value, (int, float)) else out.text(value)


def ls(args: argparse.Namespace) -> int:
    """List experiments, newest first (or as --filter and --order-by say)."""
    if args.limit is not None and args.limit < 0:
        raise CLIError("--limit must be >= 0", USAGE)
    node = selection.condition(args) if selection.selecting(args) else None  # checked before the database opens
    with closing(open_read(args.db)) as reader:
        if selection.selecting(args):
            found = selection.search(reader, node, args.order_by, args.limit)
        else:
            found = liveness.list_experiments(reader, args.type, args.status, args.tag or (), args.name, args.limit)
    if args.json:
        out.print_json(found)
        return 0
    if not found:
        print("no experiments" + (" match" if any((args.type, args.status, args.tag, args.name, args.filter)) else ""))
        return 0
    # The params and metrics the filter and order name, as columns of their own.
    shown = list(found[0].get("values", {}))
    headers = ["ID", "NAME", "TYPE", "STATUS", "START", "DURATION", "CKPTS", "BEST VAL", *shown, "TAGS"]
    rows = [
        [str(e["id"]), out.text(e["name"]), out.text(e["experiment_type"]), out.text(e["status"]),
         out.moment(e["start_time"]), out.duration(out.run_duration(e)), str(e["num_checkpoints"]),
         out.number(e["best_val_metric"]), *(_cell(e["values"][k]) for k in shown), out.text(e["tags"])]
        for e in found
    ]
    tags = 8 + len(shown)
    print(out.table(headers, rows, right=(0, 5, 6, 7, *range(8, tags)), flexible=(1, tags), optional=(tags, 4)))
    return 0


def _show_text(exp: dict[str, Any]) -> list[str]:
    lines = [f"Experiment {exp['id']}: {out.text(exp['name'])}"]
    status = out.text(exp["status"]) + (f" (recorded as {exp['stored_status']})" if exp["status"] != exp["stored_status"] else "")
    facts = [
        ("type", exp.get("experiment_type")), ("status", status), ("description", exp.get("description")),
        ("tags", exp.get("tags") or None), ("started", exp.get("start_time")), ("ended", exp.get("end_time")),
        ("duration", out.duration(out.run_duration(exp))), ("checkpoints", exp.get("num_checkpoints")),
        ("best val metric", exp.get("best_val_metric")), ("best test metric", exp.get("best_test_metric")),
    ]
    lines += [f"  {k:<17}{out.text(v)}" for k, v in facts if v is not None]
    lines.append(out.section("Reproducibility"))
    diff = exp.get("git_diff")
    dirty = exp.get("git_dirty")
    repro = [
        ("git commit", exp.get("git_commit")), ("git branch", exp.get("git_branch")),
        ("git dirty", None if dirty is None else ("yes" if dirty else "no")
         + (f" ({len(diff.splitlines())}-line diff stored; see --json)" if diff else "")),
        ("python", exp.get("python_version")), ("platform", exp.get("platform")),
        ("host", exp.get("hostname")), ("pid", exp.get("pid")), ("random seed", exp.get("random_seed")),
        ("command", exp.get("command")),
        ("packages", f"{len(exp['packages'])} recorded" if isinstance(exp.get("packages"), dict) else None),
    ]
    lines += [f"  {k:<17}{out.text(v)}" for k, v in repro if v is not None] or ["  (nothing recorded)"]
    return lines


def _aliases(model: dict[str, Any]) -> str:
    return ", ".join(model.get("aliases") or ())


def _indented(block: str) -> str:
    return "\n".join("  " + line for line in block.splitlines())


def _tables(exp: dict[str, Any]) -> list[str]:
    full = out.terminal_width()
    width = None if full is None else full - 2  # the tables are indented by two
    lines = [out.section("Hyperparameters")]
    hp = exp["hyperparameters"]
    lines.append(_indented(out.table(["NAME", "VALUE"], [[k, out.text(v)] for k, v in sorted(hp.items())], flexible=(1,), width=width))
                 if hp else "  (none)")
    lines.append(out.section("Datasets"))
    ds = exp["datasets"]
    lines.append(_indented(out.table(
        ["ID", "USAGE", "NAME", "VERSION", "SPLIT", "SAMPLES", "FROM", "TO"],
        [[str(d["id"]), out.text(d["usage_type"]), out.text(d["name"]), out.text(d["version"]),
          out.text(d["split_type"]), out.text(d["num_samples"]), out.text(d["start_date"]), out.text(d["end_date"])]
         for d in ds], right=(0, 5), flexible=(2, 3), width=width)) if ds else "  (none)")
    lines.append(out.section("Metrics"))
    ms = exp["metrics"]
    lines.append(_indented(out.table(
        ["NAME", "COUNT", "FIRST", "LAST", "MIN", "MAX"],
        [[n, str(s["count"]), out.number(s["first"]), out.number(s["last"]), out.number(s["min"]), out.number(s["max"])]
         for n, s in ms.items()], right=(1, 2, 3, 4, 5), flexible=(0,), width=width)) if ms else "  (none)")
    lines.append(out.section("Models (* = best)"))
    models = exp["models"]
    lines.append(_indented(out.table(
        ["ID", "BEST", "ALIASES", "EPISODE", "STEP", "TRAIN", "VAL", "TEST", "CHECKPOINT"],
        [[str(m["id"]), "*" if m["id"] == exp["best_model_id"] else "", _aliases(m), out.text(m["episode_num"]),
          out.text(m["global_step"]), out.number(m["train_metric"]), out.number(m["val_metric"]),
          out.number(m["test_metric"]), out.text(m["checkpoint_path"])] for m in models],
        right=(0, 3, 4, 5, 6, 7), flexible=(8, 2), width=width))
        if models else "  (none)")
    lines.append(out.section("Artifacts"))
    arts = exp["artifacts"]
    lines.append(_indented(out.table(
        ["ID", "TYPE", "NAME", "PATH", "MB"],
        [[str(a["id"]), out.text(a["artifact_type"]), out.text(a["artifact_name"]), out.text(a["artifact_path"]),
          out.number(a["file_size_mb"])] for a in arts], right=(0, 4), flexible=(2, 3), width=width)) if arts else "  (none)")
    lines.append(out.section("Notes"))
    lines += ["  " + out.printable(line) for line in (exp.get("notes") or "(none)").splitlines()]
    if exp.get("metadata"):
        lines.append(out.section("Metadata"))
        meta = exp["metadata"]
        lines += ([f"  {out.printable(str(k)):<17}{out.text(v)}" for k, v in meta.items()] if isinstance(meta, dict) else ["  " + out.text(meta)])
    return lines


def show(args: argparse.Namespace) -> int:
    """Print everything about one experiment."""
    with closing(open_read(args.db)) as reader:
        exp = experiment(reader, args.id)
        exp["datasets"] = reader.experiment_datasets(args.id)
        exp["metrics"] = reader.metrics_summary(args.id, args.split)
        exp["models"] = reader.list_models(args.id, order_by="id", ascending=True)
        exp["artifacts"] = reader.list_artifacts(args.id)
        best_model = reader.get_best_model(args.id)
    exp["best_model_id"] = None if best_model is None else best_model["id"]
    if args.json:
        out.print_json(exp)
        return 0
    width = out.terminal_width()
    # Long values (a command line, a metadata list) are clipped on a terminal; --json has them whole.
    text = "\n".join(_show_text(exp) + _tables(exp))
    print("\n".join(out.clip(line, width) for line in text.split("\n")))
    return 0


def _compared_ids(reader: Any, args: argparse.Namespace, node: Any) -> list[int]:
    """The ids given, then (with --filter) the first --limit runs it matches; --order-by orders each part."""
    ids = list(dict.fromkeys(args.ids))
    if ids and args.order_by:
        ordered = [e["id"] for e in selection.search(reader, selection.ids_condition(ids), args.order_by)]
        ids = ordered + [i for i in ids if i not in ordered]  # unknown ids stay, to be reported
    if args.filter is not None:
        matched = [e["id"] for e in selection.search(reader, node, args.order_by, args.limit + 1)]
        if len(matched) > args.limit:
            print(f"ml-persistence: compare: the filter matches more than {args.limit} experiments; "
                  f"comparing the first {args.limit} (see --limit)", file=sys.stderr)
        ids += [i for i in matched[:args.limit] if i not in ids]
    return ids


def compare(args: argparse.Namespace) -> int:
    """Show hyperparameters and metric summaries of several experiments side by side."""
    if args.filter is None and len(set(args.ids)) < 2:
        raise CLIError("compare needs at least two different experiment ids, or --filter", USAGE)
    node = selection.condition(args) if selection.selecting(args) else None  # checked before the database opens
    with closing(open_read(args.db)) as reader:
        ids = _compared_ids(reader, args, node)
        if len(ids) < 2:
            raise CLIError(f"compare needs at least two experiments; the filter selects {len(ids)}")
        exps = [experiment(reader, i) for i in ids]
        known = sorted({n for i in ids for n in reader.metric_names(i)})
        unknown = [n for n in args.metric or () if n not in known]
        if unknown:
            raise CLIError(f"no experiment among {', '.join(map(str, ids))} has metric {unknown[0]!r} "
                           f"(they have: {', '.join(known) or 'none'})")
        names = args.metric or known
        stats = {n: reader.compare_metrics(ids, n, args.split) for n in names}
    default = default_metric({i: {n: stats[n][i]["count"] for n in names if stats[n][i]["count"]} for i in ids})
    if default is not None and not args.metric:
        names = [default, *(n for n in names if n != default)]  # the metric most worth reading comes first
    grid = hyperparameter_grid(exps)
    hp_rows = [{**r, "values": {str(i): r["values"].get(i) for i in ids}} for r in grid]
    metric_rows = [
        {"metric_name": n, "experiment_id": i, **stats[n][i]} for n in names for i in ids
    ]
    if args.json:
        for e in exps:
            e.pop("git_diff", None)
        out.print_json({"experiments": exps, "hyperparameters": hp_rows, "metrics": metric_rows,
                        "default_metric": default})
        return 0
    heads = [f"#{e['id']} {out.text(e['name'])}" for e in exps]
    print(out.table(["", *heads], [
        ["status", *(out.text(e["status"]) for e in exps)],
        ["start", *(out.moment(e["start_time"]) for e in exps)],
        ["duration", *(out.duration(out.run_duration(e)) for e in exps)],
        ["best val", *(out.number(e["best_val_metric"]) for e in exps)],
    ], flexible=range(1, len(ids) + 1)))
    print(out.section("Hyperparameters (* = differs)"))
    print(out.table(["", "NAME", *(f"#{i}" for i in ids)], [
        ["*" if r["differs"] else "", r["param_name"],
         *(out.text(r["values"][i]) if i in r["values"] else "(unset)" for i in ids)]
        for r in grid
    ], flexible=range(2, len(ids) + 2)) if grid else "  (none)")
    print(out.section("Metrics" + (f" (split {args.split})" if args.split else "")))
    if not names:
        print("  (none)")
    for n in names:
        rows = [[stat, *(out.number(stats[n][i][stat]) if stats[n][i]["count"] or stat == "count" else "-"
                         for i in ids)]
                for stat in ("count", "first", "last", "min", "max", "mean")]
        print(out.table([n, *(f"#{i}" for i in ids)], rows, right=range(1, len(ids) + 1)))
        print()
    return 0


def best(args: argparse.Namespace) -> int:
    """List the best models, highest metric first."""
    if args.limit is not None and args.limit < 0:
        raise CLIError("--limit must be >= 0", USAGE)
    with closing(open_read(args.db)) as reader:
        for i in args.experiment or ():
            experiment(reader, i)
        models = reader.rank_models(args.experiment or (), args.by, args.marked, args.limit)
    if args.json:
        out.print_json(models)
        return 0
    if not models:
        print("no models")
        return 0
    print(out.table(
        ["MODEL", "EXP", "EXPERIMENT", "BEST", "ALIASES", "EPISODE", "STEP", args.by.upper().replace("_", " "),
         "CHECKPOINT"],
        [[str(m["id"]), str(m["experiment_id"]), out.text(m["experiment_name"]), "*" if m["is_best"] else "",
          _aliases(m), out.text(m["episode_num"]), out.text(m["global_step"]), out.number(m[args.by]),
          out.text(m["checkpoint_path"])]
         for m in models],
        right=(0, 1, 5, 6, 7), flexible=(2, 8, 4),
    ))
    return 0


_HISTORY_COLUMNS = ("episode", "step", "epoch", "value", "value_json", "split", "phase", "timestamp")


def _history(reader: Any, exp_id: int, name: str, split: str | None) -> Iterator[tuple[Any, ...]]:
    # Streamed: the history can be millions of rows.
    for row in reader.iter_metric_history(exp_id, name, split, size=10_000):
        yield tuple(row[c] for c in _HISTORY_COLUMNS)


def _csv_cell(value: Any) -> Any:
    # Floats round-trip exactly (repr); NaN and ±inf as 'nan', 'inf', '-inf'; NULL as an empty cell.
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else out.number(value)
    return value


def metrics(args: argparse.Namespace) -> int:
    """Print the history of one metric, streamed."""
    fmt = "json" if args.json else args.format
    with closing(open_read(args.db)) as reader:
        experiment(reader, args.id)
        names = reader.metric_names(args.id)
        if args.name not in names:
            have = ", ".join(names) if names else "none"
            raise CLIError(f"experiment {args.id} has no metric {args.name!r} (it has: {have})")
        rows = _history(reader, args.id, args.name, args.split)
        if fmt == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(_HISTORY_COLUMNS)
            for row in rows:
                writer.writerow([_csv_cell(v) for v in row])
        elif fmt == "json":
            sys.stdout.write("[")
            for n, row in enumerate(rows):
                record = dict(zip(_HISTORY_COLUMNS, row))
                record["value_json"] = out.decoded_json(record["value_json"])
                sys.stdout.write(("," if n else "") + "\n  " + out.json_line(record))
            sys.stdout.write("\n]\n")
        else:
            widths = (8, 10, 6, 14, 8, 8, 26)
            print("  ".join(h.upper().rjust(w) if i < 4 else h.upper().ljust(w)
                            for i, (h, w) in enumerate(zip(_HISTORY_COLUMNS[:4] + _HISTORY_COLUMNS[5:], widths))).rstrip())
            for row in rows:
                cells = [out.text(row[0]), out.text(row[1]), out.text(row[2]),
                         out.number(row[3]) if row[4] is None else out.text(row[4])] + [out.text(v) for v in row[5:]]
                print("  ".join(c.rjust(w) if i < 4 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the reading commands to the parser."""
    p = sub.add_parser("ls", parents=[common], help="list experiments, newest first",
                       description="List experiments, newest first. A run whose process died without ending it "
                       "shows as 'crashed' (same host, recorded pid gone) or 'stale' (no activity for an hour).")
    p.add_argument("--type", help="only this experiment_type (e.g. rl)")
    p.add_argument("--status", help="only this status: running, completed, failed, crashed, stale, ...")
    p.add_argument("--tag", action="append", help="only experiments with this tag (repeat: all of them)")
    p.add_argument("--name", help="only names containing this text")
    selection.add_arguments(p)
    p.add_argument("--limit", type=arguments.count, help="at most this many")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table (with --filter/--order-by, "
                   "each row's \"values\" holds the params and metrics they name)")
    p.set_defaults(run=ls)

    p = sub.add_parser("show", parents=[common], help="everything about one experiment",
                       description="Reproducibility, hyperparameters, datasets, per-metric summary, models "
                       "(best marked *, with their aliases), artifacts and notes of one experiment.")
    p.add_argument("id", type=arguments.row_id, metavar="ID", help="experiment id")
    p.add_argument("--split", help="summarize only metric rows of this split")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=show)

    p = sub.add_parser("compare", parents=[common], help="experiments side by side",
                       description="Hyperparameters side by side (differing ones marked *) and per-metric "
                       "summaries side by side.")
    p.add_argument("ids", type=arguments.row_id, nargs="*", metavar="ID",
                   help="two or more experiment ids (or fewer, with --filter: these come first)")
    selection.add_arguments(p)
    p.add_argument("--limit", type=arguments.positive, default=20,
                   help="with --filter: compare at most this many of the runs it matches (default: 20)")
    p.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable; default: all)")
    p.add_argument("--split", help="only metric rows of this split")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=compare)

    p = sub.add_parser("best", parents=[common], help="best models, highest val_metric first",
                       description="Models across experiments (or of --experiment), best first.")
    p.add_argument("--experiment", type=arguments.row_id, action="append", metavar="ID", help="only this experiment (repeatable)")
    p.add_argument("--by", choices=storage.RANKABLE, default="val_metric", help="rank by (default: val_metric)")
    p.add_argument("--marked", action="store_true", help="only models registered with is_best")
    p.add_argument("--limit", type=arguments.count, default=10, help="at most this many (default: 10)")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(run=best)

    p = sub.add_parser("metrics", parents=[common], help="the history of one metric",
                       description="Every logged value of one metric, in logging order (streamed).")
    p.add_argument("id", type=arguments.row_id, metavar="ID", help="experiment id")
    p.add_argument("name", metavar="NAME", help="metric name")
    p.add_argument("--split", help="only rows of this split")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default: table)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(run=metrics)
