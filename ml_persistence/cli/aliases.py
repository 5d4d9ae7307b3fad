"""Model alias commands: alias set, alias rm, alias ls."""

from __future__ import annotations

import argparse
from contextlib import closing

from .. import validate
from ..errors import InvalidTypeError, InvalidValueError, ModelNotFoundError
from ..registry import ModelRegistry
from . import arguments
from . import output as out
from .database import CLIError, experiment, open_read, open_write


def alias_name(text: str) -> str:
    """An alias argument, checked as set_alias checks it (a bad one is a usage error)."""
    try:
        return validate.alias_name(text)
    except (InvalidTypeError, InvalidValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_text(model: dict) -> str:
    return f"model {model['id']} ({out.text(model['name'])} v{out.text(model['version'])} of experiment {model['experiment_id']})"


def set_alias(args: argparse.Namespace) -> int:
    """Point an alias at a model, moving it from the model it named."""
    open_write(args.db).close()  # an existing database, upgraded to hold aliases; never created here
    with closing(open_read(args.db)) as reader:
        before = reader.get_model_by_alias(args.alias)
        model = reader.get_model(args.model)
    if model is None:
        raise CLIError(f"no model {args.model}; alias {args.alias!r} unchanged")
    try:
        ModelRegistry(args.db, agent=False).set_alias(args.alias, args.model)
    except ModelNotFoundError as exc:  # deleted meanwhile
        raise CLIError(str(exc)) from None
    if before is None or before["id"] == model["id"]:
        print(f"{args.alias} -> {_model_text(model)}")
    else:
        print(f"{args.alias} -> {_model_text(model)}, moved from model {before['id']}")
    return 0


def remove_alias(args: argparse.Namespace) -> int:
    """Remove an alias."""
    open_write(args.db).close()
    if not ModelRegistry(args.db, agent=False).delete_alias(args.alias):
        raise CLIError(f"no alias {args.alias!r}")
    print(f"removed alias {args.alias}")
    return 0


def list_aliases(args: argparse.Namespace) -> int:
    """List aliases by name with the model each names."""
    with closing(open_read(args.db)) as reader:
        if args.experiment is not None:
            experiment(reader, args.experiment)
        found = reader.list_aliases(args.experiment)
    if args.json:
        out.print_json(found)
        return 0
    if not found:
        print("no aliases")
        return 0
    print(out.table(
        ["ALIAS", "MODEL", "EXP", "EXPERIMENT", "NAME", "VERSION", "SET", "CHECKPOINT"],
        [[a["alias"], str(a["model_id"]), out.text(a["experiment_id"]), out.text(a["experiment_name"]),
          out.text(a["model_name"]), out.text(a["model_version"]), out.moment(a["updated_at"]),
          out.text(a["checkpoint_path"])] for a in found],
        right=(1, 2), flexible=(0, 3, 4, 7), optional=(6, 5),
    ))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the alias commands to the parser."""
    p = sub.add_parser("alias", help="name models: set, rm, ls (e.g. production, champion)",
                       description="An alias names one model of the database at a time (like MLflow's model "
                       "aliases); setting it on another model moves it, in one transaction.")
    commands = p.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    q = commands.add_parser("set", parents=[common], help="point ALIAS at model MODEL_ID (moving it)",
                            description="Point ALIAS at a model, moving it from the model it named.")
    q.add_argument("alias", type=alias_name, metavar="ALIAS", help="alias name, e.g. production")
    q.add_argument("model", type=arguments.row_id, metavar="MODEL_ID", help="model id (see `best`, `show`)")
    q.set_defaults(run=set_alias)
    q = commands.add_parser("rm", parents=[common], help="remove ALIAS", description="Remove an alias.")
    q.add_argument("alias", type=alias_name, metavar="ALIAS")
    q.set_defaults(run=remove_alias)
    q = commands.add_parser("ls", parents=[common], help="list aliases and the models they name",
                            description="List aliases by name, each with the model it names.")
    q.add_argument("--experiment", type=arguments.row_id, metavar="ID", help="only aliases of this experiment's models")
    q.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    q.set_defaults(run=list_aliases)
