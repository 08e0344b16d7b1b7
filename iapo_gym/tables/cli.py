"""`iapo-gym data`: list, locate, import, pull and check outcome tables.

Sub-commands::

    iapo-gym data list                     tables in the data directory, with their sizes
    iapo-gym data path [NAME]              the data directory, or one table's directory
    iapo-gym data import FILE [--name N]   convert a released *_final.pkl (or copy a table directory)
    iapo-gym data pull TASK                download the paper's release of TASK, verify it, import it
    iapo-gym data check NAME|DIR           validation + save/load round trip of a table

The data directory is ``$IAPO_GYM_DATA`` or the user cache directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iapo_gym.tables import store
from iapo_gym.tables.importer import release_status
from iapo_gym.tables.io import read_manifest
from iapo_gym.tables.validation import TableError

__all__ = ["add_parser"]


def _list(args: argparse.Namespace) -> int:
    root = store.data_dir()
    names = store.list_tables()
    print(f"data directory: {root}  (set ${store.DATA_ENV} to change it)")
    if not names:
        print("no tables yet: run `iapo-gym data pull TASK` or `iapo-gym data import FILE`")
        return 0
    print(
        f"{'name':<24} {'task':<16} {'strategy':<8} {'prompts':>7} {'queries':>7} {'contexts':>8} {'n_max':>5}  source"
    )
    bad = 0
    for name in names:
        shown = name if name.isprintable() else repr(name)
        try:
            store._check_name(name)
            m = read_manifest(root / name)
        except (TableError, ValueError, OSError) as exc:  # one bad table never hides the others
            bad += 1
            print(f"{shown:<24} invalid: {exc}")
            continue
        task = m["task"] if m["task"].isprintable() else repr(m["task"])
        print(
            f"{shown:<24} {task:<16} {m['strategy']:<8} {len(m['prompts']):>7} {len(m['query_ids']):>7} "
            f"{len(m['contexts']['names']):>8} {m['n_max']:>5}  {release_status(m['provenance'], m['checksums'])}"
        )
    if bad:
        print(f"{bad} invalid table(s): repair them, or delete their directories and import them again")
    return 0


def _path(args: argparse.Namespace) -> int:
    print(store.table_path(args.name) if args.name else store.data_dir())
    return 0


def _import(args: argparse.Namespace) -> int:
    for path in store.import_file(args.file, name=args.name, overwrite=args.force, allow_modified=args.allow_modified):
        manifest = read_manifest(path)
        status = release_status(manifest["provenance"], manifest["checksums"])
        note = "  (MODIFIED: not the pinned release file)" if status == "MODIFIED" else ""
        print(f"imported {path}{note}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    print(f"downloading {args.task} from {store.release_url()} ...")
    for path in store.pull(args.task, overwrite=args.force, timeout=args.timeout):
        print(f"pulled and verified {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from iapo_gym.tables.testing import check_table_dir

    target = Path(args.table)
    directory = target if target.is_dir() else store.table_path(args.table)
    if not directory.is_dir():
        raise store.TableNotFoundError(f"{args.table!r} is neither a table directory nor a table in {store.data_dir()}")
    table = check_table_dir(directory)
    print(f"ok: {directory} ({table.task}, {table.strategy}, {table.n_prompts} prompts x {table.n_queries} queries)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` and its sub-commands on the top-level ``iapo-gym`` parser."""
    data = subparsers.add_parser(
        "data",
        help="list, import and pull outcome tables",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{list,path,import,pull,check}")

    p = sub.add_parser("list", help="tables in the data directory")
    p.set_defaults(func=_list)

    p = sub.add_parser("path", help="print the data directory (or one table's directory)")
    p.add_argument("name", nargs="?", help="a table name (default: print the data directory)")
    p.set_defaults(func=_path)

    p = sub.add_parser("import", help="import a released *_final.pkl or a table directory")
    p.add_argument("file", type=Path, help="a released *_final.pkl file, or a table directory")
    p.add_argument("--name", help="table name (default: the task, e.g. MATH; multi-env files add -1, -2, ...)")
    p.add_argument("--force", action="store_true", help="replace existing tables of that name")
    p.add_argument(
        "--allow-modified",
        action="store_true",
        help="import a pickle that does not match the pinned release (corrupted or edited); "
        "its tables are named <task>-modified and marked MODIFIED",
    )
    p.set_defaults(func=_import)

    p = sub.add_parser("pull", help="download, verify and import the paper's table of a task")
    p.add_argument("task", help="MATH, CommonsenseQA, HelpfulHarmless or Summarization (also CQA, HH)")
    p.add_argument("--force", action="store_true", help="replace an existing table of that name")
    p.add_argument("--timeout", type=float, default=store.DOWNLOAD_TIMEOUT, help="seconds per download attempt")
    p.set_defaults(func=_pull)

    p = sub.add_parser("check", help="validate a table and round-trip it through the file format")
    p.add_argument("table", help="a table name in the data directory, or a table directory")
    p.set_defaults(func=_check)
    return data
