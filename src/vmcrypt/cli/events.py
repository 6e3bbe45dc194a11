"""``vmcrypt events``: read the control plane's event log, or follow it like ``tail -f``.

The log is append-only and served newest first by ``GET /api/v1/events``. Following
polls that route with ``since`` set to the newest time seen and prints each event once
(by ID), oldest first, until interrupted: the API has no push channel, and a poll every
few seconds is what an operator watching a re-key needs.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape

from vmcrypt.cli.api_client import (
    DEFAULT_URL,
    ApiClient,
    CaOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    UrlOpt,
    connect,
)
from vmcrypt.cli.inventory import print_rows
from vmcrypt.cli.output import out, print_json
from vmcrypt.exceptions import UsageError

__all__ = ["events", "parse_moment"]

_COLUMNS = ["time", "type", "severity", "object_type", "object_id", "user_name", "message"]
_RELATIVE = re.compile(r"(\d+)([smhd])")
_MAX_LIMIT = 1000
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_moment(text: str, *, option: str, now: datetime | None = None) -> str:
    """An ISO 8601 time with a zone, from ISO (``Z`` allowed) or a span ago (``15m``).

    The API refuses times without a zone; a naive time typed here is taken as UTC,
    which is what the log shows.
    """
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        span = timedelta(**{_UNIT[match.group(2)]: int(match.group(1))})
        return ((now or datetime.now(UTC)) - span).isoformat()
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: use an ISO time (2026-01-01T09:00:00Z) or a span ago "
            "(30s, 15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _filters(*, type_: str | None, severity: str | None, object_: str | None,
             user: str | None, since: str | None, until: str | None,
             limit: int) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if type_:
        params["type"] = type_
    if severity:
        params["severity"] = severity
    if user:
        params["user_name"] = user
    if object_:
        kind, _, object_id = object_.partition(":")
        params["object_type"] = kind
        if object_id:
            params["object_id"] = object_id
    if since:
        params["since"] = parse_moment(since, option="--since")
    if until:
        params["until"] = parse_moment(until, option="--until")
    return params


def _line(event: dict[str, Any]) -> str:
    where = event.get("object_type") or ""
    if event.get("object_id"):
        where = f"{where}:{event['object_id']}"
    who = event.get("user_name") or "-"
    return (f"{event['time']}  {event['severity']:<7}  {event['type']:<20}  {where:<16}  "
            f"{who:<14}  {event['message']}")


def _follow(api: ApiClient, params: dict[str, Any], *, seen: set[int], as_json: bool,
            interval: float) -> None:
    while True:
        time.sleep(interval)
        batch = api.get("/events", params=params)
        fresh = [e for e in reversed(batch) if int(e["id"]) not in seen]
        for event in fresh:
            seen.add(int(event["id"]))
            _print_one(event, as_json=as_json)
        if fresh:
            params["since"] = fresh[-1]["time"]


def _print_one(event: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    else:
        out.print(escape(_line(event)), highlight=False)
    sys.stdout.flush()


def events(
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this event type, e.g. audit.")
    ] = None,
    object_: Annotated[
        str | None, typer.Option("--object", help="Only events about TYPE or TYPE:ID, e.g. "
                                 "key-providers:3.")
    ] = None,
    severity: Annotated[
        str | None, typer.Option("--severity", help="info, warning or error.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's events.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this time (ISO) or span ago (15m).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Before this time (ISO) or span ago.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many.")
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between polls (--follow).")
    ] = 2.0,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Show the event log, oldest of the selection first; or follow it.

    With --json: one JSON list (newest first, as the API serves it); with --follow,
    one JSON object per line instead, so each event can be read as it arrives.

    Examples:

      vmcrypt events --since 1h --type audit

      vmcrypt events --object key-providers:3 --json

      vmcrypt events -f
    """
    params = _filters(type_=type_, severity=severity, object_=object_, user=user,
                      since=since, until=until, limit=limit)
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        batch = api.get("/events", params=params)
        if follow:
            for event in reversed(batch):
                _print_one(event, as_json=as_json)
            if batch:
                params["since"] = batch[0]["time"]
            params.pop("until", None)
            # Every event since the last one seen, however many arrived in one interval.
            params["limit"] = _MAX_LIMIT
            try:
                _follow(api, params, seen={int(e["id"]) for e in batch}, as_json=as_json,
                        interval=interval)
            except KeyboardInterrupt:
                return
        elif as_json:
            print_json(batch)
        else:
            print_rows("events", list(reversed(batch)), _COLUMNS)
