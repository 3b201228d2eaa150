"""An in-process Grid: messages go straight to ClientApp calls, one Context per node.

Lets the ServerApp's logic (sampling, validation of updates, timeouts, opt-out,
rejoining) be tested without Flower's processes. Each message's content is serialised
and parsed again on the way (as Flower does on the wire) so what a node receives is
a copy, never the server's objects. A node computes its reply when the message is
pushed; ``FakeNode.delays`` holds back its replies of a message type for that many
seconds (a slow node).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedmoe.flower.client_app import app as client_app

#: A node's behaviour: given the message and its context, the reply (or None: silent).
Behaviour = Callable[[Message, Context], Message | None]


def honest(msg: Message, context: Context) -> Message | None:
    """The ClientApp; an exception becomes an error reply, as Flower's runtime does."""
    try:
        return client_app(msg, context)
    except Exception as ex:
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
        )


def copy_content(content: RecordDict) -> RecordDict:
    """A deep copy of a RecordDict through its wire form."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    objects = get_all_nested_objects(content)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    copied = inflate_object_from_contents(content.object_id, contents)
    assert isinstance(copied, RecordDict)
    return copied


@dataclass
class FakeNode:
    node_id: int
    context: Context
    behaviour: Behaviour = honest
    online: bool = True
    received: list[str] = field(default_factory=list)
    #: Message type -> seconds after the push before the reply can be pulled.
    delays: dict[str, float] = field(default_factory=dict)


class FakeGrid(Grid):
    """Delivers each pushed message synchronously to its node's behaviour."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        # What Flower's runtime sets in the ServerApp's process (see close()).
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.run_config = run_config
        self.nodes: dict[int, FakeNode] = {}
        #: Message id -> (the reply, when it can be pulled).
        self.replies: dict[str, tuple[Message, float]] = {}
        self._next = 1000

    def add_node(self, node_config: dict[str, Any], behaviour: Behaviour = honest) -> FakeNode:
        self._next += 1
        ctx = Context(
            run_id=1,
            node_id=self._next,
            node_config=node_config,
            state=RecordDict(),
            run_config=dict(self.run_config),
        )
        node = FakeNode(self._next, ctx, behaviour)
        self.nodes[node.node_id] = node
        return node

    def close(self) -> None:
        """Forget the process-wide task identity set by ``__init__``."""
        unset: Any = None
        TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = unset

    # Grid API ---------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n.node_id for n in self.nodes.values() if n.online]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = self.nodes[msg.metadata.dst_node_id]
            node.received.append(msg.metadata.message_type)
            if not node.online:
                continue
            delivered = Message(
                copy_content(msg.content),
                msg.metadata.dst_node_id,
                msg.metadata.message_type,
                group_id=msg.metadata.group_id,
            )
            delivered.metadata.__dict__["_message_id"] = mid
            delivered.metadata.__dict__["_src_node_id"] = 1
            reply = node.behaviour(delivered, node.context)
            if reply is not None:
                if reply.has_content():
                    reply = Message(copy_content(reply.content), reply_to=delivered)
                due = time.monotonic() + node.delays.get(msg.metadata.message_type, 0.0)
                self.replies[mid] = (reply, due)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now = time.monotonic()
        ready = [m for m in message_ids if m in self.replies and self.replies[m][1] <= now]
        return [self.replies.pop(m)[0] for m in ready]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
