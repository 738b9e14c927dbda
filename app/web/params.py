"""Every operation's request parameters, declared once.

Each operation's parameters are one pydantic model below. `parse` validates a
request with it (a bad value answers 400 naming the parameter), and
`app.web.openapi` writes the operation's `parameters` from the same model, so
what is documented is what is checked.

A field is a query parameter unless marked `InPath`. Query parameters are
each given at most once, and an unknown one is refused: a misspelt filter
would otherwise silently answer with everything. An array is written
comma-separated (`state=pending,active`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from app.rules import MAX_ID_CHARS, State
from app.web.errors import ApiError, bad_parameter
from app.web.paging import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT, decode_cursor

__all__ = [
    "BUDGET_PATH", "DashboardParams", "InPath", "NoParams", "Params", "SessionListParams", "SessionParams",
    "TenantListParams", "TenantParams", "parse",
]


#: A tenant's budget (SPEC §9): GET, PUT and DELETE, with `TenantParams`.
BUDGET_PATH = "/tenants/{tenant_id}/budget"


class InPath:
    """Marks a field as a path parameter (`/sessions/{session_id}`); the others are query parameters."""


def _problem(message: str) -> PydanticCustomError:
    """A refusal whose message completes "parameter '<name>' ..." in the 400 answer."""
    return PydanticCustomError("bad_parameter", message)


def _identifier(value: Any) -> Any:
    if isinstance(value, str) and not 1 <= len(value) <= MAX_ID_CHARS:
        raise _problem(f"must be 1..{MAX_ID_CHARS} characters")
    return value


def _limit(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    # ASCII digits only: int() would also take " 7", "1_0" and other scripts' digits,
    # and refuses thousands of digits with an error of its own.
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_LIMIT))
    limit = int(value) if digits else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise _problem(f"must be an integer in 1..{MAX_LIMIT}")
    return limit


def _states(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return [State(part) for part in value.split(",")]
    except ValueError:
        raise _problem("must be a comma-separated list of " + ", ".join(state.value for state in State)) from None


def _cursor(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return decode_cursor(value)
    except ValueError:
        raise _problem("is not a cursor this API gave out") from None


# The constraints come before the validator that gives the refusal's words, so
# that pydantic writes them into the schema (after it, they are kept opaque).
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), BeforeValidator(_identifier)]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"Items per page, 1..{MAX_LIMIT}."),
                  BeforeValidator(_limit)]
#: The position after which the page starts (the decoded `next_cursor`).
Cursor = Annotated[bytes, BeforeValidator(_cursor), WithJsonSchema({
    "type": "string", "minLength": 2, "pattern": f"^{CURSOR_PATTERN.pattern}$",
    "description": "Opaque: the `next_cursor` of the previous page.",
})]
States = Annotated[list[State], Field(min_length=1, description="Comma-separated states to include, e.g. "
                                                                  "`pending,active`."),
                   BeforeValidator(_states)]


class Params(BaseModel):
    """Base of the operations' parameter models."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Documented only when an API token is configured (the dashboard's sign-in).
    token_only: ClassVar[frozenset[str]] = frozenset()


class NoParams(Params):
    """Operations that take no parameter."""


class SessionParams(Params):
    session_id: Annotated[Identifier, InPath]


class SessionListParams(Params):
    tenant_id: Identifier | None = None
    state: States | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


class TenantListParams(Params):
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


class TenantParams(Params):
    tenant_id: Annotated[Identifier, InPath]


class DashboardParams(Params):
    token_only = frozenset({"token"})
    token: str | None = Field(None, description="Signs a browser in: the token goes into an HttpOnly cookie and "
                                                "the page reloads without it in the address.")


P = TypeVar("P", bound=Params)


def path_fields(model: type[Params]) -> frozenset[str]:
    return frozenset(name for name, field in model.model_fields.items() if InPath in field.metadata)


def parse(model: type[P], path: str, query: Any, match_info: Mapping[str, str]) -> P:
    """The parameters of a request to `path`: `query` is its query (a multidict:
    repeats are seen), `match_info` its path parameters. Raises a 400 ApiError
    naming the first bad parameter."""
    in_path = path_fields(model)
    values: dict[str, Any] = {name: match_info[name] for name in in_path}
    for name, value in query.items():
        if name not in model.model_fields or name in in_path:
            expected = ", ".join(sorted(model.model_fields.keys() - in_path)) or "none"
            raise bad_parameter(name, f"is not a parameter of {path} (expected: {expected})")
        if name in values:
            raise bad_parameter(name, "is given more than once")
        values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise _refusal(error) from None


def _refusal(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    name = str(first["loc"][0])
    problem = first["msg"] if first["type"] == "bad_parameter" else f"is invalid: {first['msg']}"
    return bad_parameter(name, problem)
