"""`value`: how the rules declare their data, as immutable values.

Every event, record, session and output is a value: `apply` returns new
ones and never changes one it was given, which is what lets the agent keep
the stored state while a batch is in flight. The type checker holds that,
as for `dataclass(frozen=True)`: assigning to a field is an error under
mypy, which runs on the package (and tests/rules checks that `apply` leaves
its input alone). At run time the class is a plain slotted dataclass: a
frozen one's `__init__` sets every field through `object.__setattr__`, and
that alone made `apply` twice as slow (bench/rules_micro.py). `unsafe_hash`
keeps them hashable, as frozen ones are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

_Class = TypeVar("_Class")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[_Class]) -> type[_Class]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
