"""Wire protocol v1 (docs/protocol.md), replies: typed answers out as JSON bytes, and the
cloud's answers read back into typed ones.

What goes out is valid Unicode: a cloud result holding a lone surrogate is unusable
(the item is answered degraded), and an error message quoting one writes it as
escape text. Requests are ``proxy.wire.protocol``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import is_
from typing import Any, cast

from proxy.errors import BadAnswer, ProtocolError
from proxy.model import (
    PROTOCOL_VERSION,
    DomainQuery,
    FileAnswer,
    FileQuery,
    HashKind,
    InspectAnswer,
    InspectQuery,
    Policy,
    Rating,
    Source,
    Verdict,
    WebAnswer,
    WebQuery,
)
from proxy.wire.protocol import SURROGATE, FileBatch, clip, lone_surrogate, lone_surrogate_in

_VERDICTS = {v.value: v for v in Verdict}
_RATINGS = {r.value: r for r in Rating}
_SOURCES = {s.value: s for s in Source}
MAX_TEXT = 200  # threat names, categories, matched entries from the cloud
NO_CLOUD_NOTE = "no cloud configured"  # the ``note`` of a ``local`` answer: why none was asked

# ---------------------------------------------------------------- rendering

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
# id(answer) -> (answer, fragment). Keyed by identity because hashing a dataclass costs a
# microsecond; the memo holds the answer itself, so its id cannot be reused while memoised.
_frag_cache: dict[int, tuple[object, str]] = {}


def _frag(answer: FileAnswer | WebAnswer) -> str:
    """The JSON members of an answer after its subject, memoised: answers repeat a lot."""
    memo = _frag_cache.get(id(answer))
    if memo is not None and memo[0] is answer:
        return memo[1]
    if isinstance(answer, FileAnswer):
        parts = [f'"verdict":"{answer.verdict.value}"']
        if answer.threat is not None:
            parts.append(f'"threat":{_dumps(answer.threat)}')
    else:
        parts = [f'"rating":"{answer.rating.value}"', f'"score":{answer.score}']
        if answer.category is not None:
            parts.append(f'"category":{_dumps(answer.category)}')
    if answer.matched is not None:
        parts.append(f'"matched":{_dumps(answer.matched)}')
    parts.append(f'"source":"{answer.source.value}"')
    if answer.source is Source.LOCAL:
        parts.append(f'"note":"{NO_CLOUD_NOTE}"')
    if answer.ttl is not None:
        parts.append(f'"ttl":{answer.ttl}')
    if answer.retry_after is not None:
        parts.append(f'"retry_after":{answer.retry_after}')
    s = ",".join(parts)
    if len(_frag_cache) > 50_000:
        _frag_cache.clear()
    _frag_cache[id(answer)] = (answer, s)
    return s


def _envelope(version: str, results: Iterable[str]) -> bytes:
    return (
        f'{{"protocol":{PROTOCOL_VERSION},"pattern":{_dumps(version)},"results":['
        + ",".join(results)
        + "]}"
    ).encode()


_SUBJECT = {k.value: f',{{"{k.value}":"' for k in HashKind}  # a result's start, after a comma
# id(answer) -> '",' + its fragment + '}': a file result's end. _alive holds each answer
# whose id is a key, so no other live object can have that id (no identity check needed).
_tails: dict[int, str] = {}
_alive: dict[int, object] = {}
MAX_TAILS = 50_000


def _file_tails(answers: Sequence[FileAnswer], ids: list[int]) -> list[str]:
    """Each answer's result end, in order: looked up by id in C, made once per new answer
    (Python code runs only for the answers not seen before: cached views are new each second)."""
    tails = list(map(_tails.get, ids))
    if None not in tails:
        return cast(list[str], tails)
    if len(_tails) >= MAX_TAILS:
        _tails.clear()
        _alive.clear()
        tails = [None] * len(ids)
    for answer in compress(answers, map(is_, tails, repeat(None))):
        key = id(answer)
        if key not in _tails:
            _alive[key] = answer
            _tails[key] = f'",{_frag(answer)}}}'
    return list(map(_tails.__getitem__, ids))


def render_files(
    version: str, batch: FileBatch | Sequence[FileQuery], answers: Sequence[FileAnswer]
) -> bytes:
    """The answer to a file batch, stitched in one join with no string per item."""
    return render_file_parts(version, batch, answers)[0]


def render_file_parts(
    version: str, batch: FileBatch | Sequence[FileQuery], answers: Sequence[FileAnswer]
) -> tuple[bytes, FileBatch, list[str]]:
    """``render_files``' body, with the batch by column and each item's result end (what
    follows its hex digest in the body, ``'",' + fields + '}'``): the query log reads
    the rows from these instead of the body (``proxy.logs.entries.Answers``).

    ``parts`` interleaves, per item, its subject's start (its kind), its hex digest and
    its result's end (one per distinct answer, memoised by identity: answers repeat a
    lot), filled by slice assignment; the envelope's head rides on the first part.
    """
    if not isinstance(batch, FileBatch):
        batch = FileBatch.of(batch)
    if not answers:
        return _envelope(version, []), batch, []
    tails = _file_tails(answers, list(map(id, answers)))
    parts: list[str] = [""] * (3 * len(answers) + 1)
    parts[0:-1:3] = map(_SUBJECT.__getitem__, batch.names)
    parts[1:-1:3] = batch.hexes
    parts[2:-1:3] = tails
    parts[0] = f'{{"protocol":{PROTOCOL_VERSION},"pattern":{_dumps(version)},"results":[' + parts[0][1:]
    parts[-1] = "]}"
    return "".join(parts).encode(), batch, tails


def action(policy: Policy, answer: WebAnswer, *, block_degraded: bool = False) -> str:
    """``block`` or ``allow``: what ``policy`` does with ``answer``.

    The policy blocks ratings (``Policy.blocks``): ``low`` dangerous; ``medium`` also
    highly_suspicious; ``high`` also suspicious and untested. A degraded item (no
    cloud answered in time) is rated ``untested``, so ``high`` blocks it; under
    ``low`` and ``medium`` it gets ``degraded_action`` (``block_degraded``), allowed
    by default: either way it carries ``retry_after``, and the product must flag it
    and ask again, never take it as safe.
    """
    if block_degraded and answer.source is Source.DEGRADED:
        return "block"
    return "block" if policy.blocks(answer.rating) else "allow"


def _action(policy: Policy | None, answer: WebAnswer, block_degraded: bool) -> str:
    if policy is None:
        return ""
    return f',"action":"{action(policy, answer, block_degraded=block_degraded)}"'


def render_web(
    version: str, queries: Sequence[WebQuery], answers: Sequence[WebAnswer], policy: Policy | None,
    *, block_degraded: bool = False,
) -> bytes:
    """Web results; with a ``policy``, each with its ``action`` (``action``)."""
    return _envelope(
        version,
        [
            f'{{"url":{_dumps(q.url)},{_frag(a)}{_action(policy, a, block_degraded)}}}'
            for q, a in zip(queries, answers)
        ],
    )


def render_domains(
    version: str, queries: Sequence[DomainQuery], answers: Sequence[WebAnswer]
) -> bytes:
    return _envelope(
        version,
        [f'{{"{q.key}":{_dumps(q.item)},{_frag(a)}}}' for q, a in zip(queries, answers)],
    )


def render_inspect(version: str, query: InspectQuery, answer: InspectAnswer) -> bytes:
    result: dict[str, Any] = json.loads(answer.result) if answer.result else {}
    result["url"] = query.url
    result["source"] = answer.source.value
    if answer.source is Source.LOCAL:
        result["note"] = NO_CLOUD_NOTE
    for key, value in (("ttl", answer.ttl), ("retry_after", answer.retry_after)):
        if value is not None:
            result[key] = value
        else:
            result.pop(key, None)
    return _envelope(version, [_dumps(result)])


def render_error(error: ProtocolError) -> bytes:
    """The JSON error body; a lone surrogate the message quotes is written as its escape
    text, so the body is valid Unicode for strict clients, whatever the client sent."""
    message = error.message
    if not message.isascii():
        message = SURROGATE.sub(lambda m: ascii(m[0])[1:-1], message)
    body: dict[str, Any] = {"code": error.code, "message": message}
    if error.item is not None:
        body["item"] = error.item
    return _dumps({"error": body}).encode()


# ---------------------------------------------------------------- results from the cloud


def _text(result: dict[str, Any], key: str) -> str | None:
    value = result.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f'"{key}" must be a string of at most {MAX_TEXT} characters')
    bad = lone_surrogate(value)  # products would get an answer their JSON parser refuses
    if bad is not None:
        raise ValueError(f'"{key}" has a {bad}')
    return value


def _int(result: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = result.get(key)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f'"{key}" must be an integer from {lo} to {hi}')
    return value


def file_answer_from_result(result: dict[str, Any], source: Source) -> FileAnswer:
    """The cloud's result object for one file, as an answer from ``source``. Raises ValueError."""
    value = result.get("verdict")
    verdict = _VERDICTS.get(value) if isinstance(value, str) else None
    if verdict is None:
        raise ValueError(f"unknown verdict {clip(repr(value))}")
    return FileAnswer(
        verdict,
        source,
        threat=_text(result, "threat"),
        ttl=_int(result, "ttl", 0, 7 * 86400),
        matched=_text(result, "matched"),
    )


def web_answer_from_result(result: dict[str, Any], source: Source) -> WebAnswer:
    value = result.get("rating")
    rating = _RATINGS.get(value) if isinstance(value, str) else None
    if rating is None:
        raise ValueError(f"unknown rating {clip(repr(value))}")
    score = _int(result, "score", 0, 100)
    return WebAnswer(
        rating,
        source,
        score=rating.default_score if score is None else score,
        category=_text(result, "category"),
        ttl=_int(result, "ttl", 0, 7 * 86400),
        matched=_text(result, "matched"),
    )


def inspect_answer_from_result(result: dict[str, Any], source: Source) -> InspectAnswer:
    ttl = _int(result, "ttl", 0, 7 * 86400)
    kept = {k: v for k, v in result.items()  # the members the appliance sets itself
            if k not in ("source", "note", "ttl", "retry_after", "url")}
    bad = lone_surrogate_in(kept)
    if bad is not None:
        raise ValueError(f"inspection result {bad}")
    body = _dumps(kept).encode()
    if len(body) > 64 * 1024:
        raise ValueError("inspection result is over 64 KiB")
    return InspectAnswer(body, source, ttl=ttl)


def parse_results(body: bytes, count: int) -> list[dict[str, Any]]:
    """An upstream answer's body: ``{"protocol": 1, "results": [...]}`` with exactly ``count``
    result objects. ``BadAnswer`` (a ValueError) names what was wrong."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise BadAnswer("the answer is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BadAnswer(f"bad JSON in the answer: {err}") from None
    if not isinstance(doc, dict):
        raise BadAnswer("the answer is not a JSON object")
    if doc.get("protocol") != PROTOCOL_VERSION:
        raise BadAnswer(f"protocol {doc.get('protocol')!r}, expected {PROTOCOL_VERSION}")
    results = doc.get("results")
    if not isinstance(results, list):
        raise BadAnswer("the answer has no results list")
    if len(results) != count:
        raise BadAnswer(f"{len(results)} results for {count} items")
    for index, result in enumerate(results):
        if not isinstance(result, dict):
            raise BadAnswer(f"result {index} is not a JSON object")
    return results


def source_of(value: str) -> Source | None:
    return _SOURCES.get(value)
