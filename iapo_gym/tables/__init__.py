"""Outcome tables: the in-memory format, validation, the on-disk format, import and the data store.

* :class:`OutcomeTable` (``format``): what one task's LLM does, per prompt and query.
* :func:`validate_table` (``validation``): one clear :class:`TableError` per defect.
* :func:`save_table` / :func:`load_table` (``io``): versioned npz + JSON manifest, atomic writes.
* :func:`import_released` (``importer``): the paper's released pickles, via a restricted unpickler.
* :func:`load_named`, :func:`import_file`, :func:`pull`, :func:`data_dir` (``store``): named tables
  in ``$IAPO_GYM_DATA`` or the user cache directory.
* :func:`check_table` (``testing``): the public conformance check for your own tables.
"""

from iapo_gym.tables.format import SCHEMA_VERSION, STRATEGIES, OutcomeTable, concat_queries, resplit
from iapo_gym.tables.importer import TableImportError, import_released, import_released_all
from iapo_gym.tables.io import load_table, save_table
from iapo_gym.tables.store import TableNotFoundError, data_dir, import_file, list_tables, load_named, pull, table_path
from iapo_gym.tables.testing import check_table, check_table_dir, example_table
from iapo_gym.tables.validation import TableError, validate_arrays, validate_manifest, validate_table

__all__ = [
    "SCHEMA_VERSION",
    "STRATEGIES",
    "OutcomeTable",
    "TableError",
    "TableImportError",
    "TableNotFoundError",
    "check_table",
    "check_table_dir",
    "concat_queries",
    "data_dir",
    "example_table",
    "import_file",
    "import_released",
    "import_released_all",
    "list_tables",
    "load_named",
    "load_table",
    "pull",
    "resplit",
    "save_table",
    "table_path",
    "validate_arrays",
    "validate_manifest",
    "validate_table",
]
