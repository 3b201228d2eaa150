"""The ServerApp's view of the federation: which node is which client, who is alive,
and every message it received.

- **Identification.** A node is identified by its reply to ``query.hello``: its client
  id, opt-out flag and metadata. A node whose hello fails, or disagrees with the first
  node on the data's shape or classes, or claims a client another live node already
  is, is refused with a logged reason. A new node id is greeted once, and its reply is read
  whenever the server looks (:meth:`Roster.discover`), so a restarted node (a new node
  id for the same client), however slow to start, rejoins and replaces its dead
  predecessor.
- **Timeouts.** :meth:`Roster.exchange` pushes messages and collects replies until
  every awaited node has answered or the timeout passes; what arrived by then is the
  result. A node that misses a deadline, or that the SuperLink reports unavailable,
  becomes a *suspect*: it still receives messages but is no longer waited for, until
  it answers again; only when no other target answers (every one a suspect, say,
  after a loaded machine's nodes all missed a deadline) are the suspects waited for,
  so a round is not given up while live nodes may still answer.
- **Audit.** Every reply is recorded (:class:`AuditEntry`): which node and client, the
  message type, the records it carried and how many arrays and bytes of array data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedmoe.experiment.config import PartitionConfig
from fedmoe.flower.messages import HELLO, NODE, PARTITION
from fedmoe.flower.records import count_arrays, number

logger = logging.getLogger("flwr").getChild("fedmoe")

#: Seconds a hello stays deliverable: a node answers it whenever it can (see discover).
HELLO_TTL = 3600.0


@dataclass(frozen=True)
class NodeInfo:
    """What a node said about itself at hello (metadata only)."""

    node_id: int
    client: int
    opt_out: bool
    num_train: int
    num_val: int
    num_test: int
    input_shape: tuple[int, ...]
    num_classes: int
    majority: tuple[int, ...]
    dataset: str
    source: str
    scheme: str
    digest: str
    threads: int
    partition_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    """One message the server received."""

    phase: str
    round: int
    node_id: int
    client: int | None
    message_type: str
    error: str | None
    records: dict[str, str]
    arrays: int
    array_bytes: int


def node_info(node_id: int, content: RecordDict) -> NodeInfo:
    """Parse a hello reply; ValueError naming what is missing or malformed."""
    if NODE not in content.config_records:
        raise ValueError("hello reply lacks its 'node' record")
    rec: ConfigRecord = content.config_records[NODE]
    params = content.config_records.get(PARTITION, ConfigRecord())

    def get(key: str, kind: type) -> Any:
        value = rec.get(key)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"hello field {key!r} must be an integer, got {value!r}")
        if not isinstance(value, kind):
            raise ValueError(f"hello field {key!r} must be {kind.__name__}, got {value!r}")
        return value

    return NodeInfo(
        node_id=node_id,
        client=get("client", int),
        opt_out=get("opt-out", bool),
        num_train=get("num-train", int),
        num_val=get("num-val", int),
        num_test=get("num-test", int),
        input_shape=tuple(int(v) for v in get("input-shape", list)),
        num_classes=get("num-classes", int),
        majority=tuple(int(v) for v in get("majority", list)),
        dataset=get("dataset", str),
        source=get("source", str),
        scheme=get("scheme", str),
        digest=get("digest", str),
        threads=get("threads", int),
        partition_params=dict(params.items()),
    )


def _from_node(reply: Message) -> bool:
    """Whether the node itself answered (content, or an error its ClientApp raised),
    as opposed to the SuperLink reporting the node or the message unavailable."""
    if not reply.has_error():
        return True
    return reply.error.code in (
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
    )


class Roster:
    """Nodes, clients, suspects and the audit log of one run (see the module doc)."""

    def __init__(self, grid: Grid, partition: PartitionConfig, poll_interval: float) -> None:
        self.grid = grid
        self.partition = partition
        self.num_clients = partition.clients
        self.poll_interval = poll_interval
        self.nodes: dict[int, NodeInfo] = {}
        self.refused: dict[int, str] = {}
        self.suspects: set[int] = set()
        self.audit: list[AuditEntry] = []
        self.threads: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        #: Hellos sent and not answered yet: message id -> node id.
        self._hellos: dict[str, int] = {}

    # ------------------------------------------------------------------ who is who

    def client_nodes(self) -> dict[int, int]:
        """Client id -> node id of the identified nodes the SuperLink lists as online."""
        online = set(self.grid.get_node_ids())
        return {info.client: nid for nid, info in self.nodes.items() if nid in online}

    def info(self, client: int) -> NodeInfo | None:
        """The newest identified node of ``client``, or None."""
        found = [info for info in self.nodes.values() if info.client == client]
        return found[-1] if found else None

    def opt_in_clients(self) -> list[int]:
        """Identified clients that take part in training, sorted."""
        return sorted({i.client for i in self.nodes.values() if not i.opt_out})

    def first(self) -> NodeInfo:
        """The first identified node (its data description is the reference)."""
        if not self.nodes:
            reasons = "; ".join(f"node {n}: {r}" for n, r in self.refused.items())
            raise RuntimeError("no node could be identified" + (f" ({reasons})" if reasons else ""))
        return next(iter(self.nodes.values()))

    def join(self, min_clients: int, timeout: float) -> None:
        """Greet nodes until ``min_clients`` clients are identified or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            self.discover(max(remaining, self.poll_interval))
            known = len({i.client for i in self.nodes.values()})
            if known >= min_clients or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        logger.info(
            "fedmoe: %d of %d clients identified (%d opt-out); %d node(s) refused",
            len({i.client for i in self.nodes.values()}),
            self.num_clients,
            sum(i.opt_out for i in self.nodes.values()),
            len(self.refused),
        )

    def discover(self, timeout: float) -> None:
        """Greet node ids not yet identified or refused and read the hello replies that
        arrived, waiting up to ``timeout`` seconds for the newly greeted ones.

        A node is greeted once: a slow one (its first ClientApp process imports torch
        and loads its data, half a minute on a loaded machine) is not greeted again,
        its pending hello is read at every later look, so it is identified whenever
        its reply arrives. A node that stayed silent past one wait is not waited for
        again, so it cannot stall each round."""
        online = set(self.grid.get_node_ids())
        new = online - set(self.nodes) - set(self.refused)
        for mid, nid in list(self._hellos.items()):
            if nid not in new:  # gone, or identified or refused since
                del self._hellos[mid]
        greeted = set(self._hellos.values())
        # Flower drops a reply that comes after its message's TTL: a hello waits long.
        pushed = self._push(
            "hello", {nid: (HELLO, RecordDict()) for nid in new - greeted}, HELLO_TTL
        )
        self._hellos.update(pushed)
        if not self._hellos:
            return
        replies = self._collect("hello", -1, self._hellos, set(pushed), timeout, fallback=False)
        for nid, reply in replies.items():
            self._identify(nid, reply)

    def _identify(self, nid: int, reply: Message) -> None:
        try:
            if reply.has_error():
                raise ValueError(f"hello failed: {reply.error.reason}")
            info = node_info(nid, reply.content)
            self._check(info)
        except ValueError as exc:
            self.refused[nid] = str(exc)
            logger.warning("fedmoe: node %d refused: %s", nid, exc)
            return
        online = set(self.grid.get_node_ids())
        for old, other in list(self.nodes.items()):
            if other.client != info.client:
                continue
            if old in online and old not in self.suspects:
                reason = f"claims client {info.client}, which live node {old} already is"
                self.refused[nid] = reason
                logger.warning("fedmoe: node %d refused: %s", nid, reason)
                return
            logger.info(
                "fedmoe: client %d rejoined as node %d (was node %d)", info.client, nid, old
            )
            del self.nodes[old]
        self.nodes[nid] = info
        self.seen[nid] = info.client
        self.threads[info.client] = max(self.threads.get(info.client, 0), info.threads)

    def _check(self, info: NodeInfo) -> None:
        if not 0 <= info.client < self.num_clients:
            raise ValueError(f"client id {info.client} outside 0..{self.num_clients - 1}")
        p = self.partition
        sizes = (info.num_train, info.num_val, info.num_test)
        if info.scheme not in ("local-data", "natural") and sizes != (p.train, p.val, p.test):
            # Partition sizes are exact: anything else is a misconfigured or lying node
            # (the training-set size weighs its updates).
            raise ValueError(
                f"reports {sizes} train/val/test examples, the partition has "
                f"{(p.train, p.val, p.test)}"
            )
        if min(sizes) < 1:
            raise ValueError(f"reports {sizes} train/val/test examples")
        if self.nodes:
            ref = self.first()
            if (info.input_shape, info.num_classes, info.dataset) != (
                ref.input_shape,
                ref.num_classes,
                ref.dataset,
            ):
                raise ValueError(
                    f"data {info.dataset} {info.input_shape} with {info.num_classes} classes "
                    f"differs from the federation's {ref.dataset} {ref.input_shape} with "
                    f"{ref.num_classes} classes"
                )

    # ------------------------------------------------------------------ messages

    def exchange(
        self,
        phase: str,
        round_: int,
        targets: Mapping[int, tuple[str, RecordDict]],
        timeout: float,
        await_suspects: bool = False,
        fallback: bool = True,
    ) -> dict[int, Message]:
        """Send ``targets`` (node id -> (message type, content)) and collect replies
        until every non-suspect target (every target, with ``await_suspects``) has
        answered or ``timeout`` seconds pass. With ``fallback``, when no non-suspect
        target answered from the node itself, the suspects are waited for as well.
        Returns node id -> reply for the replies that arrived; audits each."""
        pending = self._push(phase, targets, timeout)
        awaited = {
            mid for mid, nid in pending.items() if await_suspects or nid not in self.suspects
        }
        return self._collect(phase, round_, pending, awaited, timeout, fallback)

    def _push(
        self, phase: str, targets: Mapping[int, tuple[str, RecordDict]], ttl: float
    ) -> dict[str, int]:
        """Send ``targets``; message id -> node id of those the SuperLink accepted."""
        if not targets:
            return {}
        messages = [
            Message(content, dst_node_id=nid, message_type=mtype, ttl=ttl, group_id=phase)
            for nid, (mtype, content) in targets.items()
        ]
        ids = list(self.grid.push_messages(messages))
        pending = {mid: nid for mid, nid in zip(ids, targets, strict=True) if mid}
        for nid in set(targets) - set(pending.values()):
            logger.warning("fedmoe: %s: could not send to node %d", phase, nid)
        return pending

    def _collect(
        self,
        phase: str,
        round_: int,
        pending: dict[str, int],
        awaited: set[str],
        timeout: float,
        fallback: bool,
    ) -> dict[int, Message]:
        """Pull replies to ``pending`` (message id -> node id; answered ones are removed
        from it) until the ``awaited`` messages are answered or ``timeout`` passes;
        node id -> reply, each audited. ``fallback``: see :meth:`exchange`."""
        replies: dict[int, Message] = {}
        heard = False  # a reply from a node itself (not the SuperLink answering for it)
        deadline = time.monotonic() + timeout
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                nid_or_none = pending.pop(mid, None)
                awaited.discard(mid)
                if nid_or_none is None:
                    continue
                replies[nid_or_none] = reply
                if _from_node(reply):
                    heard = True
                    self.suspects.discard(nid_or_none)
                else:  # the SuperLink answered for it: unreachable, or the message expired
                    self.suspects.add(nid_or_none)
                self._audit(phase, round_, nid_or_none, reply)
            if fallback and not awaited and not heard:
                awaited = set(pending)  # nobody else answered: wait for the suspects
            if not awaited or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        for mid, nid in pending.items():
            if mid in awaited:
                self.suspects.add(nid)
                logger.warning(
                    "fedmoe: %s: node %d (client %s) did not reply within %.0fs; "
                    "not waiting for it until it answers again",
                    phase,
                    nid,
                    self._client(nid),
                    timeout,
                )
        return replies

    def _client(self, nid: int) -> int | None:
        return self.seen.get(nid)

    def _audit(self, phase: str, round_: int, nid: int, reply: Message) -> None:
        error = reply.error.reason if reply.has_error() else None
        records: dict[str, str] = {}
        arrays = nbytes = 0
        if reply.has_content():
            records = {name: type(rec).__name__ for name, rec in reply.content.items()}
            arrays, nbytes = count_arrays(reply.content)
            threads = [
                int(number(rec["threads"], "threads"))
                for rec in reply.content.metric_records.values()
                if "threads" in rec
            ]
            client = self._client(nid)
            if threads and client is not None:
                self.threads[client] = max(self.threads.get(client, 0), *threads)
        self.audit.append(
            AuditEntry(
                phase=phase,
                round=round_,
                node_id=nid,
                client=self._client(nid),
                message_type=reply.metadata.message_type,
                error=error,
                records=records,
                arrays=arrays,
                array_bytes=nbytes,
            )
        )

    def audit_log(self) -> list[dict[str, Any]]:
        """The audit as JSON-able dicts (the hello entries get their client filled in)."""
        out = []
        for entry in self.audit:
            row = asdict(entry)
            if row["client"] is None:
                row["client"] = self.seen.get(entry.node_id)
            out.append(row)
        return out
