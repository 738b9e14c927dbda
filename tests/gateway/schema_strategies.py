"""Hypothesis strategies for instances of the event schemas, written for the
keywords app/schemas uses (after `resolved_schema` inlined the `$ref`s):
`allOf`, `type` (object, string, integer), `required`, `properties`, `const`,
`enum`, `minLength`/`maxLength`, `minimum`/`maximum`, `format: date-time`
(with its `pattern`), the pattern of strings without U+0000, and annotations. A schema using any other keyword is
refused (`UnsupportedSchema`), so a schema that grows past this generator
fails loudly rather than being generated wrongly.

Objects get their required properties, each optional one or not, and now and
then fields the schema does not name (SPEC §3: unknown fields are ignored). A
property with no constraint (`metadata`) gets any JSON value. An integer is
sometimes written with a fraction (60.0), which JSON Schema counts as an
integer and the service refuses (a documented exception).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["NO_NUL_PATTERN", "UnsupportedSchema", "instances", "json_values"]

_ANNOTATIONS = frozenset({"title", "description", "$comment", "$schema"})
_CONSTRAINTS = frozenset({"allOf", "type", "required", "properties", "const", "enum", "minLength", "maxLength",
                          "minimum", "maximum", "format", "pattern"})
#: The pattern of ids and names: no U+0000 (SPEC §3).
NO_NUL_PATTERN = r"^[^\u0000]*$"
#: JSON numbers a float holds exactly: an integral float beyond would round.
_EXACT_FLOAT = 2**53

#: Any JSON value, integers within the 64 bits a JSON parser like orjson keeps exact.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


class UnsupportedSchema(ValueError):
    """The schema uses a keyword (or a combination) this generator does not handle."""


def instances(schema: dict[str, Any], date_times: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Values valid under `schema`; `date_times` gives the `format: date-time` strings."""
    return _strategy(schema, date_times)


def _merged(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `allOf` folded in: one set of constraints."""
    unknown = schema.keys() - _CONSTRAINTS - _ANNOTATIONS
    if unknown:
        raise UnsupportedSchema(f"keywords {sorted(unknown)} in {schema}")
    merged: dict[str, Any] = {}
    for part in [{k: v for k, v in schema.items() if k != "allOf"}, *map(_merged, schema.get("allOf", ()))]:
        for keyword, value in part.items():
            if keyword in _ANNOTATIONS:
                continue
            if keyword not in merged:
                merged[keyword] = value
            elif keyword == "required":
                merged[keyword] = [*merged[keyword], *(name for name in value if name not in merged[keyword])]
            elif keyword == "properties":
                merged[keyword] = {name: _merged({"allOf": [merged[keyword][name], rule]})
                                   if name in merged[keyword] else rule for name, rule in value.items()} | {
                    name: rule for name, rule in merged[keyword].items() if name not in value}
            elif keyword in ("minimum", "minLength"):
                merged[keyword] = max(merged[keyword], value)
            elif keyword in ("maximum", "maxLength"):
                merged[keyword] = min(merged[keyword], value)
            elif keyword == "enum":
                merged[keyword] = [option for option in merged[keyword] if option in value]
            elif merged[keyword] != value:
                raise UnsupportedSchema(f"{keyword}: {merged[keyword]!r} and {value!r} both apply")
    if "const" in merged and "enum" in merged:
        if merged["const"] not in merged["enum"]:
            raise UnsupportedSchema(f"const {merged['const']!r} is not in enum {merged['enum']}")
        del merged["enum"]
    return merged


def _strategy(schema: dict[str, Any], date_times: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    schema = _merged(schema)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind is None:
        if set(schema) - {"properties", "required"}:
            raise UnsupportedSchema(f"constraints without a type: {schema}")
        return json_values
    if kind == "integer":
        return _integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "string":
        if schema.get("format") == "date-time":
            return date_times  # the pattern says the same as the format, in more detail
        if schema.get("pattern", NO_NUL_PATTERN) != NO_NUL_PATTERN or "format" in schema:
            raise UnsupportedSchema(f"a pattern or format other than date-time: {schema}")
        # st.text()'s own alphabet (no surrogates), without U+0000 under the pattern.
        alphabet = st.characters(exclude_categories=("Cs",), exclude_characters="\x00" if "pattern" in schema else "")
        return st.text(alphabet, min_size=schema.get("minLength", 0), max_size=schema.get("maxLength"))
    if kind == "object":
        return _objects(schema, date_times)
    raise UnsupportedSchema(f"type {kind!r}")


@st.composite
def _integers(draw: st.DrawFn, low: int | None, high: int | None) -> int | float:
    """Mostly ints; one time in ten an integral float, when one fits the bounds exactly."""
    if draw(st.integers(0, 9)) == 0:
        exact_low = -_EXACT_FLOAT if low is None else max(low, -_EXACT_FLOAT)
        exact_high = _EXACT_FLOAT if high is None else min(high, _EXACT_FLOAT)
        if exact_low <= exact_high:
            return float(draw(st.integers(exact_low, exact_high)))
    return draw(st.integers(low, high))


@st.composite
def _objects(draw: st.DrawFn, schema: dict[str, Any], date_times: st.SearchStrategy[str]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    value: dict[str, Any] = {}
    for name, rule in properties.items():
        if name in required or draw(st.booleans()):
            value[name] = draw(_strategy(rule, date_times))
    for name in required:
        if name not in properties:
            value[name] = draw(json_values)
    extra = draw(st.dictionaries(st.text().filter(lambda name: name not in properties), json_values, max_size=2))
    return extra | value
