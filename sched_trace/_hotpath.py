"""The hot path of a probe on a plain function, written for that probe.

Every call of a traced plain function runs one function from here: compare the level
(off: call through, as ``_probe.gated`` does for generators and coroutines), read the
thread's context, take the ids, read the extractors, deliver the start event, run the
call, deliver the end event (:data:`TEMPLATE`); a ``keep_if`` probe runs the call first
and decides (:data:`KEPT_TEMPLATE`); a request probe reports its phase at entry
(:data:`REQUEST_TEMPLATE`). Calls cost here (one Python frame each), so the function is
generated once per probe, with each extractor of the grammar written in as its
expression (``_extract`` gives it, built only of checked ASCII names) instead of called:
a value that cannot be read falls back to the extractor itself, which reads it the slow
way and counts it. Extractors that are callables, and conditional attributes, stay
calls; the probe's constants are literals (``repr`` of a str or an int) and its objects
the function's globals. The source is registered with ``linecache``, so a traceback
through a traced call shows these lines.

The three templates also exist in C (``_speedups``, built from ``_speedups.c`` at
install when a compiler is at hand): the same steps through the same helpers, without
the Python frame, which is about half of an enabled span's instructions.
:func:`sync_traced`, :func:`kept_traced` and :func:`request_traced` use it when it is
built, unless the environment sets ``SCHED_TRACE_PURE_PYTHON=1`` (:mod:`._native`); the Python templates
stay the reference (tests/core and tests/requests run on both: tests/hot_path.py).
"""

from __future__ import annotations

import itertools
import linecache
from typing import Any, Callable, Optional

from . import _native

_next_code = itertools.count(1).__next__

#: The traced function; the fields in braces are the probe's (its constants as literals:
#: ``repr`` of a str or an int; its extractors' expressions).
TEMPLATE = '''\
def traced(wrapped, instance, args, kwargs):
    if {level!r} > LEVEL.active or (compiling[0] is not None and compiling[0]()):
        return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
    cell = _cell_or_none(None) or _context_cell()
    top = cell[0]
    parent, batch_id, rank, sink = top
    if rank is None:  # the thread's own rank, cached while the identities' epoch holds
        rank, epoch = cell[1]
        if epoch != rank_epoch[0]:
            rank = _thread_rank(cell)
    inherited = batch_id  # what spans inside this one take as their batch id
{ids}
    span_id = _next_span_id()
    start_ns = monotonic_ns() + _clock._offset_ns
{mb}
{size}
{extra}
    calls = calls_of[{start_index!r}]
    if calls:
        event = _tuple_new(event_type, ({name!r}, {level!r}, start_ns, None, rank, mb, batch_id, size, extra,
                                        None, span_id, parent))
        if sink is not None:  # inside an undecided keep_if span: wait for its decision
            sink.append(({start_index!r}, event))
        else:
            for function, owner in calls:
                try:
                    function(event)
                except Exception as exc:
                    count_error(owner, {kind!r}, exc)
    cell[0] = (span_id, inherited, rank, sink)
    error = None
    try:
        return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
    except BaseException as exc:
        error = exc
        raise
    finally:
        end_ns = monotonic_ns() + _clock._offset_ns
        cell[0] = top
        calls = calls_of[{end_index!r}]
        if calls:
            event = _tuple_new(event_type, ({name!r}, {level!r}, start_ns, end_ns, rank, mb, batch_id, size, extra,
                                            error, span_id, parent))
            if sink is not None:
                sink.append(({end_index!r}, event))
            else:
                for function, owner in calls:
                    try:
                        function(event)
                    except Exception as exc:
                        count_error(owner, {kind!r}, exc)
        error = event = None  # no frame -> exception -> traceback -> frame cycle
'''
_INDENT = " " * 4


def _value(target: str, extractor: Optional[Callable[..., Any]], name: str, indent: str = _INDENT) -> str:
    """``target = ...``: None, the extractor's expression (falling back to a call), or a call."""
    if extractor is None:
        return f"{indent}{target} = None"
    inline = getattr(extractor, "inline", None)
    if inline is None:
        return f"{indent}{target} = {name}(instance, args, kwargs)"
    return (f"{indent}try:\n{indent}    {target} = {inline}\n"
            f"{indent}except Exception:  # unreadable: the extractor's slow path reads it and counts it\n"
            f"{indent}    {target} = {name}(instance, args, kwargs)")


def _attributes(attrs: tuple, values: dict[str, Any], indent: str = _INDENT) -> str:
    if not attrs:
        return f"{indent}extra = NO_ATTRS"
    if any(condition is not None for _, _, condition in attrs):
        return f"{indent}extra = read_attrs(instance, args, kwargs)"
    lines, items = [], []
    for index, (key, read, _) in enumerate(attrs):
        values[f"attr_{index}"] = read
        lines.append(_value(f"attr_value_{index}", read, f"attr_{index}", indent))
        items.append(f"{key!r}: attr_value_{index}")  # keys are identifiers (_extract.mapping_items)
    return "\n".join(lines) + f"\n{indent}extra = {{{', '.join(items)}}}"


#: How a call takes its rank and batch ids (``_id_mode``; the C form reads the same numbers).
IDS_ENCLOSING, IDS_NEW_BATCH, IDS_IDENTITY = 0, 1, 2


def _id_mode(probe: Any) -> int:
    """:data:`IDS_IDENTITY`: ``Probe.identity`` (rank keys, a batch id extractor, or a keep_if
    batch, whose ids wait for the call); :data:`IDS_NEW_BATCH`: a batch takes a new batch id,
    and so do the spans inside it; :data:`IDS_ENCLOSING`: the enclosing span's."""
    if probe.rank_keys or probe.batch_id is not None or (probe.keep is not None and probe.is_batch):
        return IDS_IDENTITY
    return IDS_NEW_BATCH if probe.is_batch else IDS_ENCLOSING


def _ids(probe: Any) -> str:
    mode = _id_mode(probe)
    if mode == IDS_IDENTITY:
        return f"{_INDENT}rank, batch_id, inherited = identity(instance, args, kwargs, rank, batch_id)"
    if mode == IDS_NEW_BATCH:
        return f"{_INDENT}batch_id = inherited = _next_batch_id()"
    return ""


def sync_traced(probe: Any, helpers: dict[str, Any]) -> Callable[..., Any]:
    """The traced function of ``probe`` (a plain function, no keep_if): the C form when it
    is built, else the template's. The template reads the probe's
    constants as literals, and ``helpers`` (the module-level functions and state it calls)
    and the probe's objects as its globals: one dict, not a closure cell per name."""
    if _native.speedups is not None:
        return c_traced(probe, helpers)
    namespace = dict(helpers, event_type=probe.event_type, calls_of=probe.manager.event_calls,
                     count_error=probe.manager._count_error, microbatch=probe.microbatch,
                     batch_size=probe.batch_size, read_attrs=probe.read_attrs, identity=probe.identity,
                     __builtins__=__builtins__)
    source = TEMPLATE.format(
        name=probe.name, level=probe.level, kind=probe.kind, start_index=probe.start_index,
        end_index=probe.end_index, ids=_ids(probe), mb=_value("mb", probe.microbatch, "microbatch"),
        size=_value("size", probe.batch_size, "batch_size"), extra=_attributes(probe.attrs, namespace))
    return _compiled(source, f"<sched-trace probe {probe.name!r} #{_next_code()}>", namespace)


def _c_extractor(extractor: Optional[Callable[..., Any]]) -> Optional[tuple]:
    """``(extractor, plan)`` for ``_speedups``: the extractor is the fallback (and, without
    a plan, the reader)."""
    return None if extractor is None else (extractor, getattr(extractor, "plan", None))


def _c_attrs(probe: Any, helpers: dict[str, Any]) -> tuple[int, Any]:
    """(mode, what) of the probe's attributes for ``_speedups``: none, or planned (each key's
    extractor and its condition, read where the condition holds, as ``probe.read_attrs``)."""
    if not probe.attrs:
        return 0, helpers["NO_ATTRS"]
    return 2, tuple((key, _c_extractor(read), condition) for key, read, condition in probe.attrs)


def c_traced(probe: Any, helpers: dict[str, Any]) -> Callable[..., Any]:
    """The C form of :data:`TEMPLATE` for ``probe``, or of :data:`KEPT_TEMPLATE` for a
    keep_if probe (``_speedups.Traced``)."""
    attrs_mode, attrs = _c_attrs(probe, helpers)
    return _native.speedups.Traced(
        probe.name, probe.level, probe.kind, probe.start_index, probe.end_index, _id_mode(probe), probe.event_type,
        probe.manager.event_calls, probe.manager._count_error, probe.identity, _c_extractor(probe.microbatch),
        _c_extractor(probe.batch_size), attrs_mode, attrs, helpers,
        **({} if probe.keep is None else {"keep": probe.keep, "decided": probe._decided}))


def _compiled(source: str, filename: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 (a template of checked names)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return namespace["traced"]


#: A keep_if probe's traced function: the call, the decision, then its events (``_probe``).
KEPT_TEMPLATE = '''\
def traced(wrapped, instance, args, kwargs):
    if {level!r} > LEVEL.active or (compiling[0] is not None and compiling[0]()):
        return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
    cell = _cell_or_none(None) or _context_cell()
    top = cell[0]
{ids}
    span_id, start_ns, pending = _next_span_id(), monotonic_ns() + _clock._offset_ns, []
    cell[0] = (span_id, inherited, rank, pending)  # what runs inside waits in ``pending``
    result = error = None
    try:
        result = wrapped(*args, **kwargs) if kwargs else wrapped(*args)
        return result
    except BaseException as exc:
        error = exc
        raise
    finally:
        cell[0] = top
        if error is None and not keep(instance, args, kwargs, result):  # an error is never idle
            idle[{name!r}] += 1
            if pending:
                decided(False, top, (span_id, batch_id, rank, start_ns), pending, instance, args, kwargs, None)
        elif pending or top[3] is not None:  # events inside it, or a span around it, wait
            decided(True, top, (span_id, batch_id, rank, start_ns), pending, instance, args, kwargs, error)
        else:  # kept, and nothing waits: its start and end events now (what Probe._decided does)
            end_ns = monotonic_ns() + _clock._offset_ns
            if rank is None:  # the thread's own rank, cached while the identities' epoch holds
                rank, epoch = cell[1]
                if epoch != rank_epoch[0]:
                    rank = _thread_rank(cell)
{mb}
{size}
{extra}
            calls = calls_of[{start_index!r}]
            if calls:
                fire(calls, _tuple_new(event_type, ({name!r}, {level!r}, start_ns, None, rank, mb, batch_id, size,
                                                    extra, None, span_id, top[0])))
            calls = calls_of[{end_index!r}]
            if calls:
                fire(calls, _tuple_new(event_type, ({name!r}, {level!r}, start_ns, end_ns, rank, mb, batch_id, size,
                                                    extra, error, span_id, top[0])))
        error = result = None  # no frame -> exception -> traceback -> frame cycle
'''


def kept_traced(probe: Any, helpers: dict[str, Any]) -> Callable[..., Any]:
    """The traced function of a keep_if probe on a plain function (the C form when it is
    built, as :func:`sync_traced`): an idle call (a busy poll's usual case) costs a span
    id, a clock read, the condition and a counter; a kept one with nothing waiting inside
    or around it delivers its two events in this frame."""
    if _native.speedups is not None:
        return c_traced(probe, helpers)
    manager = probe.manager
    namespace = dict(helpers, keep=probe.keep, decided=probe._decided, identity=probe.identity,
                     event_type=probe.event_type, calls_of=manager.event_calls, fire=manager.fire,
                     microbatch=probe.microbatch, batch_size=probe.batch_size, read_attrs=probe.read_attrs,
                     __builtins__=__builtins__)
    deep = " " * 12
    if _id_mode(probe) == IDS_IDENTITY:  # a keep_if batch is one too
        ids = (f"{_INDENT}rank, batch_id, inherited = identity(instance, args, kwargs, "
               f"top[2] or current_rank(), top[1])")
    else:  # spans inside take the enclosing rank (None: the thread's) and batch
        ids = f"{_INDENT}rank, batch_id = top[2], top[1]\n{_INDENT}inherited = batch_id"
    source = KEPT_TEMPLATE.format(
        level=probe.level, name=probe.name, ids=ids, start_index=probe.start_index, end_index=probe.end_index,
        mb=_value("mb", probe.microbatch, "microbatch", deep), size=_value("size", probe.batch_size, "batch_size", deep),
        extra=_attributes(probe.attrs, namespace, deep))
    return _compiled(source, f"<sched-trace keep_if probe {probe.name!r} #{_next_code()}>", namespace)


#: A request probe's traced function: the phase reported at call entry, then the call.
REQUEST_TEMPLATE = '''\
def traced(wrapped, instance, args, kwargs):
    if {level!r} <= LEVEL.active:
        calls = calls_of[REQUEST]
        if calls{when}:
{rid}
            if rid is not None:  # unreadable: counted in stats()['extract_missing'] by the extractor
                cell = _cell_or_none(None) or _context_cell()
                rank, epoch = cell[1]  # the thread's own rank, never an enclosing span's
                if epoch != rank_epoch[0]:
                    cell[1] = rank, epoch = current_with_epoch()
                top = cell[0]
{rank_keys}
{extra}
{prompt}
{output}
                event = _tuple_new(RequestEvent, ({phase}, monotonic_ns() + _clock._offset_ns,
                                                  rid if rid.__class__ is str else str(rid), rank, prompt, output,
                                                  top[1], extra))
                if top[3] is not None:  # inside an undecided keep_if span: wait for its decision
                    top[3].append((REQUEST, event))
                else:
                    for function, owner in calls:
                        try:
                            function(event)
                        except Exception as exc:
                            count_error(owner, "request", exc)
                event = None
    return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
'''


def request_traced(probe: Any, helpers: dict[str, Any]) -> Callable[..., Any]:
    """The traced function of a request probe (``_request_probe.RequestProbe``): its gate,
    ``when``, extractors and event in one frame, as :func:`sync_traced` does for stages
    (in C, ``_speedups.request_traced``, when it is built)."""
    manager = probe.manager
    if _native.speedups is not None:
        attrs_mode, attrs = _c_attrs(probe, helpers)
        return _native.speedups.request_traced(
            probe.phase, probe.level, helpers["REQUEST"], helpers["RequestEvent"], manager.event_calls,
            manager._count_error, probe.when, _c_extractor(probe.request_id), _c_extractor(probe.prompt_tokens),
            _c_extractor(probe.output_tokens), tuple(probe.rank_keys), attrs_mode, attrs, probe.aborted, helpers)
    namespace = dict(helpers, calls_of=manager.event_calls, count_error=manager._count_error, when=probe.when,
                     request_id=probe.request_id, prompt_tokens=probe.prompt_tokens,
                     output_tokens=probe.output_tokens, rank_keys=probe.rank_keys, read_attrs=probe.read_attrs,
                     aborted=probe.aborted, __builtins__=__builtins__)
    deep = " " * 16
    phase = (f"'aborted' if str(extra.get('status')) in aborted else {probe.phase!r}" if probe.aborted
             else repr(probe.phase))
    rank_keys = (f"{deep}rank = with_overrides(rank, tuple((key, read(instance, args, kwargs)) "
                 f"for key, read in rank_keys))" if probe.rank_keys else "")
    source = REQUEST_TEMPLATE.format(
        level=probe.level, when=" and when(instance, args, kwargs)" if probe.when is not None else "",
        rid=_value("rid", probe.request_id, "request_id", " " * 12), rank_keys=rank_keys,
        extra=_attributes(probe.attrs, namespace, deep), phase=phase,
        prompt=_value("prompt", probe.prompt_tokens, "prompt_tokens", deep),
        output=_value("output", probe.output_tokens, "output_tokens", deep))
    return _compiled(source, f"<sched-trace request probe {probe.name!r} #{_next_code()}>", namespace)
