"""Import direction: only the engine packages speak SQL or import a database driver.

ml_persistence/sqlite/ and ml_persistence/postgres/ hold every SQL text and every import of
sqlite3 / aiosqlite / psycopg / asyncpg; they import from the rest of ml_persistence only the
modules below, so the rest reaches a database only through ml_persistence.storage.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("ml_persistence", "agent")
ENGINES = ("ml_persistence.sqlite", "ml_persistence.postgres")
DRIVERS = ("sqlite3", "aiosqlite", "psycopg", "psycopg_binary", "psycopg_pool", "asyncpg")
ENGINE_MAY_IMPORT = {
    f"ml_persistence.{name}" for name in ("events", "errors", "storage", "validate", "timestamps", "strictjson", "rows")
}
# Uppercase SQL keywords, as the library writes its statements. Docstrings and argparse help are prose.
SQL = re.compile(
    r"\b(SELECT|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|ALTER\s+TABLE|PRAGMA|BEGIN\s+IMMEDIATE"
    r"|CREATE\s+(TABLE|(UNIQUE\s+)?INDEX|VIEW|TRIGGER)|DROP\s+(TABLE|INDEX|VIEW)|VACUUM|ATTACH\s+DATABASE)\b"
)


def _modules() -> Iterator[tuple[str, Path]]:
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _in(module: str, packages: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _imports(module: str, path: Path, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Yield (line, absolute module) for every import, `from x import y` giving x.y too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield node.lineno, source
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _prose(tree: ast.AST) -> set[int]:
    """Return the ids of string constants that are prose: docstrings and argparse help texts."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in ("help", "description", "epilog", "usage"):
                    found.update(id(n) for n in ast.walk(keyword.value) if isinstance(n, ast.Constant))
    return found


def _sql_texts(tree: ast.AST) -> Iterator[tuple[int, str, str]]:
    """Yield (line, keyword, text) for each string constant, not prose, that holds SQL."""
    prose = _prose(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            match = SQL.search(node.value)
            if match:
                yield node.lineno, match.group(0), node.value


def _violations() -> list[str]:
    found = []
    for module, path in _modules():
        where = path.relative_to(REPO)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        engine = _in(module, ENGINES)
        seen = set()
        for line, target in _imports(module, path, tree):
            if engine:
                top = ".".join(target.split(".")[:2])  # ml_persistence.rows.local_text: ml_persistence.rows
                allowed = top == "ml_persistence" or top in {*ENGINES, *ENGINE_MAY_IMPORT}
                bad = _in(top, {"ml_persistence"}) and not allowed
                why = f"engine imports {top}"
            else:
                bad = _in(target, DRIVERS)
                why = f"imports the database driver {target.partition('.')[0]}"
            if bad and (line, why) not in seen:
                seen.add((line, why))
                found.append(f"{where}:{line}: {why}")
        if engine:
            continue
        for line, keyword, text in _sql_texts(tree):
            found.append(f"{where}:{line}: SQL text {keyword!r} in {text[:60]!r}")
    return found


def test_only_engines_speak_sql_or_import_drivers() -> None:
    found = _violations()
    assert not found, (
        "outside ml_persistence/sqlite/ and ml_persistence/postgres/ no module may import a database "
        "driver or hold SQL text; the engines import from the rest of ml_persistence only "
        f"{', '.join(sorted(ENGINE_MAY_IMPORT))}. {len(found)} offence(s):\n" + "\n".join(found)
    )


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    source = (
        '"""SELECT in a docstring is prose."""\n'
        "import sqlite3\n"
        "from psycopg import sql\n"
        'Q = f"DELETE FROM {t} WHERE id = ?"\n'
        'parser.add_argument("--quick", help="PRAGMA quick_check instead")\n'
    )
    tree = ast.parse(source)
    assert {t for _, t in _imports("ml_persistence.x", tmp_path / "x.py", tree)} >= {"sqlite3", "psycopg.sql"}
    assert [(line, keyword) for line, keyword, _ in _sql_texts(tree)] == [(4, "DELETE FROM")]
    tree = ast.parse("from ..writer import W\nfrom .. import events\nfrom .schema import S\n")
    engine = {t for _, t in _imports("ml_persistence.sqlite.store", tmp_path / "store.py", tree)}
    assert engine >= {"ml_persistence.writer", "ml_persistence.events", "ml_persistence.sqlite.schema"}
