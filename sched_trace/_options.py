"""What a declaration takes: the one list of options, per kind, and its checks.

Declarations come from four places: ``@stage``, ``@batch``, ``instrument()`` and
``[[instrument]]`` tables in TOML. All of them are checked here, against the
TypedDicts below; the TOML keys, the extractor options and the error messages
are derived from them, so an option is spelled once.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping, Sequence, TypedDict, Union

from . import _conditions, _extract
from ._errors import InstrumentationError
from ._events import REQUEST_PHASES

#: A string in the extractor grammar (see ``_extract``), or ``(instance, args, kwargs) -> value``.
Extractor = Union[str, Callable[[Any, tuple, dict], Any]]
#: A string in the condition grammar (see ``_extract``), or a callable returning a truth value.
Condition = Union[str, Callable[..., Any]]
#: Attribute name -> extractor, or ``"EXPR if CONDITION"`` (absent when the condition is false).
Attributes = Mapping[str, Extractor]


class SpanOptions(TypedDict, total=False):
    """Options of a stage or a batch: ``@stage``, ``@batch``, ``instrument(kind="stage"|"batch")``."""

    parent: str  # stages only: the stage's parent in the stage tree
    microbatch: Extractor
    batch_size: Extractor
    batch_id: Extractor
    requests: Extractor  # the batch's requests: exporters record their ids, off the hot path
    rank: Mapping[str, Extractor]  # per-call rank keys (pp_rank ...)
    attrs: Attributes
    keep_if: Condition  # decided after the call: a span only for work, idle calls counted


class RequestOptions(TypedDict, total=False):
    """Options of ``instrument(kind="request")``: one phase of a request's life per call."""

    phase: str
    request_id: Extractor
    prompt_tokens: Extractor
    output_tokens: Extractor
    when: Condition
    status: Extractor
    aborted_statuses: Sequence[str]
    rank: Mapping[str, Extractor]
    attrs: Attributes


class ThreadOptions(TypedDict, total=False):
    """Options of ``instrument(kind="thread")``: the calling thread's identity, set after the call."""

    thread_label: str
    rank: Mapping[str, Extractor]


KINDS: dict[str, type] = {"stage": SpanOptions, "batch": SpanOptions, "request": RequestOptions,
                          "thread": ThreadOptions}
#: Options a kind refuses although its TypedDict lists them.
_REFUSED = {"batch": frozenset({"parent"})}
# SGLang's tiers: 1 = request phases. A thread declaration has no level: it always applies.
DEFAULT_LEVEL = {"stage": 2, "batch": 1, "request": 1, "thread": 0}


def _role(annotation: Any) -> str:
    text = getattr(annotation, "__forward_arg__", annotation)
    return {"Extractor": "extractor", "Condition": "condition", "Mapping[str, Extractor]": "mapping",
            "Attributes": "attributes", "str": "text", "Sequence[str]": "texts"}[text]


#: option -> role: extractor, condition, mapping (of extractors), attributes (extractors, each
#: maybe conditional), text, texts (list of strings).
ROLES: dict[str, str] = {
    name: _role(annotation) for options in KINDS.values() for name, annotation in options.__annotations__.items()
}
#: The TOML type of each role.
TOML_TYPES = {"extractor": str, "condition": str, "mapping": dict, "attributes": dict, "text": str, "texts": list}


def options_of(kind: str) -> tuple[str, ...]:
    return tuple(name for name in KINDS[kind].__annotations__ if name not in _REFUSED.get(kind, ()))


def check(target: str, kind: str, options: Mapping[str, Any]) -> None:
    """Raise InstrumentationError when ``options`` do not fit ``kind`` (at declaration)."""
    if kind not in KINDS:
        raise InstrumentationError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    allowed = options_of(kind)
    given = [key for key, value in options.items() if value is not None]
    unknown = [key for key in given if key not in ROLES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], ROLES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InstrumentationError(f"{target!r}: unknown option(s) {', '.join(unknown)}{hint}")
    wrong = [key for key in given if key not in allowed]
    if wrong and kind == "request":
        raise InstrumentationError(
            f"{target!r}: {', '.join(wrong)} do not apply to kind='request'; a request event "
            f"takes {', '.join(allowed)}"
        )
    if wrong:
        owners = [k for k in KINDS if all(key in options_of(k) for key in wrong)]
        raise InstrumentationError(
            f"{target!r}: {', '.join(wrong)} only apply to kind={' or '.join(map(repr, owners))} "
            f"(this target is kind={kind!r})"
        )
    if kind == "request":
        _check_request(target, options)


def _check_request(target: str, options: Mapping[str, Any]) -> None:
    phase = options.get("phase")
    if phase not in REQUEST_PHASES:
        raise InstrumentationError(
            f"{target!r}: kind='request' needs phase= one of {', '.join(REQUEST_PHASES)}, got {phase!r}"
        )
    if options.get("request_id") is None:
        raise InstrumentationError(
            f"{target!r}: kind='request' needs request_id= an extractor such as 'request.request_id'"
        )
    aborted = options.get("aborted_statuses")
    if aborted is not None:
        if phase != "finished" or options.get("status") is None:
            raise InstrumentationError(
                f"{target!r}: aborted_statuses= needs phase='finished' and a status= extractor"
            )
        if isinstance(aborted, str) or not all(isinstance(item, str) for item in aborted):
            raise InstrumentationError(f"{target!r}: aborted_statuses= must be a list of strings, got {aborted!r}")


def check_grammar(options: Mapping[str, Any], params: "_extract.Parameters | None" = None) -> None:
    """Parse every extractor and condition in ``options`` (ExtractorError if one is malformed).

    With ``params`` (the target's signature) roots are checked against its parameters
    too; without, only the grammar (the target is not imported yet).
    """
    params = params if params is not None else _extract.Parameters(None)
    for name, value in options.items():
        role = ROLES.get(name)
        if value is None or role is None:
            continue
        if role == "extractor":
            _extract.parse(value, name, params)
        elif role == "condition":
            _conditions.parse_condition(value, name, params, after_call=name == "keep_if")
        elif role == "mapping":
            _extract.parse_mapping(value, name, params)
        elif role == "attributes":
            _conditions.parse_attributes(value, params)
