"""Where tables live: the data directory, named tables, import and pull of the paper's release.

* The data directory is ``$IAPO_GYM_DATA`` when set, else the user cache directory
  (``platformdirs.user_cache_dir("iapo-gym")``, e.g. ``~/.cache/iapo-gym`` on Linux).
* A named table is the table directory ``<data dir>/<name>/`` (format: :mod:`iapo_gym.tables.io`).
  The real tasks use their task names: ``MATH``, ``CommonsenseQA``, ``HelpfulHarmless``,
  ``Summarization``.
* :func:`import_file` converts a released pickle (or copies a table directory) into the data
  directory. A released file holding several envs (HH, SB) becomes ``<name>`` (env 0) plus
  ``<name>-1``, ``<name>-2``, ... (env ``i``); a one-env file becomes ``<name>``.
* :func:`pull` downloads a released file from the pinned raw URL of the authors' repository
  (override the base with ``$IAPO_GYM_RELEASE_URL``), verifies its git blob id (and sha256 where
  known) before anything runs or is written, then imports it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tables.importer import (
    RELEASE_BLOBS,
    RELEASE_COMMIT,
    RELEASE_FILES,
    RELEASE_SHA256,
    git_blob_id,
    import_released_bytes,
    is_modified,
    release_match,
)
from iapo_gym.tables.io import MANIFEST_FILE, load_table, read_manifest, save_table

__all__ = [
    "DATA_ENV",
    "RELEASE_URL",
    "RELEASE_URL_ENV",
    "TASK_FILES",
    "TableNotFoundError",
    "data_dir",
    "import_file",
    "list_tables",
    "load_named",
    "pull",
    "release_url",
    "table_path",
]

DATA_ENV = "IAPO_GYM_DATA"
RELEASE_URL_ENV = "IAPO_GYM_RELEASE_URL"
#: Pinned raw URL of the release's ``data/`` folder.
RELEASE_URL = f"https://raw.githubusercontent.com/IAPO-AAAI25/IAPO-PSST/{RELEASE_COMMIT}/data"
#: Seconds before a download attempt gives up.
DOWNLOAD_TIMEOUT = 60.0

#: Task name -> released file.
TASK_FILES: dict[str, str] = {task: file for file, task in RELEASE_FILES.items()}
#: Other spellings accepted by :func:`pull` (case-insensitive).
_ALIASES = {"cqa": "CommonsenseQA", "hh": "HelpfulHarmless", "sb": "SynthBernoulli", "summ": "Summarization"}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
#: Longest table name (a directory name on every file system).
MAX_NAME_LENGTH = 128


class TableNotFoundError(FileNotFoundError):
    """No table of that name in the data directory; the message says how to get one."""


def data_dir() -> Path:
    """The data directory (``$IAPO_GYM_DATA``, else the user cache directory); not created here."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("iapo-gym"))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid table name {name!r}: use up to {MAX_NAME_LENGTH} letters, digits, '_', '-', '.', '+' "
            "(not starting with '.' or '-'; no spaces, newlines or other control characters)"
        )
    return name


def table_path(name: str) -> Path:
    """The directory of the named table (it may not exist)."""
    return data_dir() / _check_name(name)


def list_tables() -> list[str]:
    """Names of the tables in the data directory, sorted.

    Directories whose name is not a valid table name are listed too, so that ``data list`` can
    report them.
    """
    root = data_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())


def _not_found(name: str) -> TableNotFoundError:
    task_hint = name.split("-")[0] if name.split("-")[0] in TASK_FILES else "TASK"
    file_hint = TASK_FILES.get(task_hint, "FILE")
    return TableNotFoundError(
        f"no table named {name!r} in the data directory {data_dir()} (set ${DATA_ENV} to use another). "
        f"Get it with `iapo-gym data pull {task_hint}` (downloads the paper's release), or download it "
        f"elsewhere and run `iapo-gym data import FILE` (e.g. {file_hint}); `iapo-gym data list` shows what is there"
    )


def load_named(name: str) -> OutcomeTable:
    """Load the named table from the data directory.

    Raises:
        TableNotFoundError: no such table (the message names ``iapo-gym data import FILE`` and
            ``iapo-gym data pull TASK``).
        TableError: the table exists but is invalid or corrupted.
    """
    path = table_path(name)
    if not (path / MANIFEST_FILE).is_file():
        raise _not_found(name)
    return load_table(path)


def _default_name(path: Path) -> str:
    if path.name in RELEASE_FILES:
        return RELEASE_FILES[path.name]
    stem = path.name.split(".")[0].removesuffix("_final")
    return stem


def _names(name: str, count: int) -> list[str]:
    return [name if i == 0 else f"{name}-{i}" for i in range(count)]


def _save_all(tables: list[OutcomeTable], name: str, overwrite: bool) -> list[Path]:
    names = _names(_check_name(name), len(tables))
    reserved = [n for n, t in zip(names, tables, strict=True) if is_modified(t.provenance) and n in TASK_FILES]
    if reserved:
        raise ValueError(
            f"table name {reserved[0]!r} is reserved for the verified release of that task, and this table is "
            f"MODIFIED (it does not match the pinned release file); choose another name, e.g. --name {reserved[0]}-modified"
        )
    root = data_dir()
    if not overwrite:
        existing = [n for n in names if (root / n).exists()]
        if existing:
            raise FileExistsError(
                f"table {existing[0]!r} already exists in {root}; pass overwrite=True (CLI: --force) or choose --name"
            )
    root.mkdir(parents=True, exist_ok=True)
    return [save_table(t, root / n, overwrite=overwrite) for t, n in zip(tables, names, strict=True)]


def import_file(
    path: str | Path, name: str | None = None, overwrite: bool = False, *, allow_modified: bool = False
) -> list[Path]:
    """Import a released pickle, or copy a table directory, into the data directory.

    A pickle is compared with the pinned release files first: one that matches none (corrupted or
    edited) is refused unless ``allow_modified``; then its tables are marked
    ``provenance["modified"]``, named ``<task>-modified`` by default, and may not take a release
    task's name (``MATH``, ...), so ``IAPO-MATH-v0`` never runs on a modified table.

    Args:
        path: a released ``*_final.pkl`` file (read with the restricted unpickler), or a table
            directory in the on-disk format (validated and copied).
        name: the table name (default: the task of a released file, e.g. ``MATH``; the directory's
            name for a table directory).
        overwrite: replace existing tables of that name.
        allow_modified: import a pickle that is not byte-identical to a pinned release file.

    Returns:
        The written table directories (``<name>``, then ``<name>-1`` ... for multi-env files).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give the path of a released *_final.pkl file or a table directory")
    if path.is_dir():
        read_manifest(path)
        table = load_table(path)
        return _save_all([table], name or path.name, overwrite)
    data = path.read_bytes()
    match = release_match(data)
    tables = import_released_bytes(data, path.name, task=RELEASE_FILES.get(match or path.name), allow_modified=allow_modified)
    default = RELEASE_FILES[match] if match else _default_name(path) + "-modified"
    return _save_all(tables, name or default, overwrite)


def release_url() -> str:
    """Base URL of the release's data folder (``$IAPO_GYM_RELEASE_URL`` overrides the pinned one)."""
    return os.environ.get(RELEASE_URL_ENV, RELEASE_URL).rstrip("/")


def _resolve_task(task: str) -> tuple[str, str]:
    if task in TASK_FILES:
        return task, TASK_FILES[task]
    if task in RELEASE_FILES:
        return RELEASE_FILES[task], task
    lowered = {t.lower(): t for t in TASK_FILES} | _ALIASES
    if task.lower() in lowered:
        canonical = lowered[task.lower()]
        return canonical, TASK_FILES[canonical]
    raise ValueError(f"unknown task {task!r}; pull one of {', '.join(TASK_FILES)}")


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https or a user override
            buf = io.BytesIO()
            shutil.copyfileobj(response, buf)
            return buf.getvalue()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(
            f"downloading {url} failed: HTTP {exc.code} {exc.reason}. Download the file elsewhere and run "
            "`iapo-gym data import FILE`"
        ) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(
            f"could not download {url} ({reason}); this machine looks offline. Download the file on a "
            "machine with internet access, copy it here and run `iapo-gym data import FILE`"
        ) from exc


def pull(task: str, overwrite: bool = False, timeout: float = DOWNLOAD_TIMEOUT) -> list[Path]:
    """Download a task's released table, verify it, and import it into the data directory.

    The download is checked against the git blob id of the pinned release (and its sha256 where
    known) before it is unpickled or written; a mismatch raises and writes nothing.

    Args:
        task: ``MATH``, ``CommonsenseQA``, ``HelpfulHarmless``, ``Summarization`` (also ``CQA``,
            ``HH``, the file name, any case).
        overwrite: replace an existing table of that name.
        timeout: seconds per download attempt.

    Raises:
        RuntimeError: offline, an HTTP error, or a checksum mismatch (with what to do next).
    """
    name, file_name = _resolve_task(task)
    if not overwrite and (data_dir() / name).exists():
        raise FileExistsError(f"table {name!r} already exists in {data_dir()}; pass overwrite=True (CLI: --force)")
    url = f"{release_url()}/{file_name}"
    data = _download(url, timeout)
    blob = git_blob_id(data)
    if blob != RELEASE_BLOBS[file_name]:
        raise RuntimeError(
            f"the download of {url} is not the released {file_name}: git blob id {blob}, expected "
            f"{RELEASE_BLOBS[file_name]}; nothing was written. Retry, or check ${RELEASE_URL_ENV}"
        )
    sha = hashlib.sha256(data).hexdigest()
    if file_name in RELEASE_SHA256 and sha != RELEASE_SHA256[file_name]:
        raise RuntimeError(
            f"the download of {url} has sha256 {sha}, expected {RELEASE_SHA256[file_name]}; nothing was written"
        )
    tables = import_released_bytes(data, file_name, task=name)
    return _save_all(tables, name, overwrite)
