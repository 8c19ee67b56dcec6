"""Reference system time: reference tables, their validation, and the budgeted clock."""

from ntng_ray.rst.clock import (
    FORWARD,
    HESSIAN,
    OPTIMIZER,
    TRAIN,
    RSTClock,
    forward_cost,
    hessian_cost,
    step_cost,
)
from ntng_ray.rst.table import (
    LinearFit,
    ReferenceTable,
    TableReport,
    TableUnit,
    list_shipped_tables,
    load_table,
    parse_table,
    resolve_table,
    shipped_table_names,
    validate_table,
    write_table,
)

__all__ = [
    "FORWARD",
    "HESSIAN",
    "OPTIMIZER",
    "TRAIN",
    "LinearFit",
    "RSTClock",
    "ReferenceTable",
    "TableReport",
    "TableUnit",
    "forward_cost",
    "hessian_cost",
    "list_shipped_tables",
    "load_table",
    "parse_table",
    "resolve_table",
    "shipped_table_names",
    "step_cost",
    "validate_table",
    "write_table",
]
