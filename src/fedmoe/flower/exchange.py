"""The personalisation exchanges, which every client's results depend on: wait for every
live node, ask a client's new node again when its old one died, and say why a client was
lost.

A round of federated training may go on without a slow node (its update is simply not
averaged), but a client whose personalise or evaluate reply is not waited for loses its
results. So :func:`collect` waits for every target, suspects included, for the whole
timeout, and after each pass greets new nodes: a client whose node died and came back
(a new node id) is asked again, until every client has answered, every remaining one
has been tried on its current node, or the time is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict

from fedmoe.flower.log import FederationLog
from fedmoe.flower.messages import DECLINED
from fedmoe.flower.records import count_arrays
from fedmoe.flower.roster import Roster, logger


def accepted(reply: Message | None, metrics_only: bool = False) -> str | None:
    """None if the reply can be used, else why not (no reply, error, declined, or
    parameters where only metrics may come back)."""
    if reply is None:
        return "no reply before the timeout"
    if reply.has_error():
        return f"node error: {reply.error.reason}"
    if DECLINED in reply.content.config_records:
        reason = reply.content.config_records[DECLINED].get("reason", "")
        return f"declined ({reason!s})"
    if metrics_only and count_arrays(reply.content)[0]:
        return "sent parameters where only metrics may come back"
    return None


def collect(
    roster: Roster,
    log: FederationLog,
    phase: str,
    clients: Iterable[int],
    message: Callable[[int], tuple[str, RecordDict]],
    timeout: float,
    grace: float,
    retry: bool = True,
) -> dict[int, Message]:
    """Send ``message(client)`` to each of ``clients``' nodes and return client -> the
    accepted (metrics-only) reply. Waits for every node up to ``timeout`` seconds in
    all; with ``retry``, a client whose node is gone is waited for ``grace`` seconds to
    come back as a new node and asked again there. Each client that did not make it is
    in ``log.lost`` with the last reason."""
    wanted = sorted(set(clients))
    deadline = time.monotonic() + timeout
    done: dict[int, Message] = {}
    tried: set[tuple[int, int]] = set()
    reasons: dict[int, str] = {}
    waited_since: float | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if retry:
            roster.discover(min(remaining, grace))
        nodes = roster.client_nodes()
        todo = {
            c: nodes[c]
            for c in wanted
            if c not in done and c in nodes and (c, nodes[c]) not in tried
        }
        if not todo:
            absent = [c for c in wanted if c not in done and c not in nodes]
            if not retry or not absent:
                break
            # Some clients have no live node: give them ``grace`` seconds to come back.
            waited_since = waited_since or time.monotonic()
            if time.monotonic() - waited_since >= grace:
                break
            time.sleep(roster.poll_interval)
            continue
        waited_since = None
        replies = roster.exchange(
            phase, -1, {nid: message(c) for c, nid in todo.items()}, remaining, await_suspects=True
        )
        for client, nid in todo.items():
            tried.add((client, nid))
            reply = replies.get(nid)
            why = accepted(reply, metrics_only=True)
            if why is None and reply is not None:
                done[client] = reply
                reasons.pop(client, None)
            else:
                reasons[client] = why or "no reply"
                log.reject(phase, -1, roster.nodes[nid], reasons[client])
        if not retry:
            break
    for client in wanted:
        if client not in done:
            reason = reasons.get(client, "its node was not online")
            log.lost[client] = f"{phase}: {reason}"
            logger.warning("fedmoe: %s: lost client %d: %s", phase, client, reason)
    return done
