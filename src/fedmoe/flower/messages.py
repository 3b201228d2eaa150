"""The names both apps agree on: message types and the records in a message's content.

Server -> node, and what comes back:

========================  ==========================  ================================
message type              server sends                node replies
========================  ==========================  ================================
``query.hello``           nothing                     ``node``, ``partition-params``
``train``                 ``global``, ``fedavg``      ``update`` + ``metrics``, or
                                                      ``declined`` (opt-out)
``evaluate``              ``global``, ``fedavg``      ``metrics``, or ``declined``
``train.personalise``     ``global`` (best model)     ``metrics``
``evaluate.personalise``  nothing                     ``metrics``
========================  ==========================  ================================

``global`` and ``update`` are ArrayRecords (one model, see :mod:`fedmoe.flower.records`);
``fedavg`` is a ConfigRecord holding ``round``; ``metrics`` a MetricRecord (every reply's
``metrics`` also holds ``threads``, the node's torch thread count); ``node`` and
``partition-params`` are ConfigRecords of metadata; ``declined`` a ConfigRecord holding
``reason``.
"""

HELLO = "query.hello"
TRAIN = "train"
VALIDATE = "evaluate"
PERSONALISE = "train.personalise"
EVALUATE = "evaluate.personalise"

GLOBAL = "global"
#: Prefix of the records ``clusters.0``, ``clusters.1``, ... holding IFCA's cluster models.
CLUSTERS = "clusters"
UPDATE = "update"
FEDAVG = "fedavg"
METRICS = "metrics"
DECLINED = "declined"
NODE = "node"
PARTITION = "partition-params"

#: Key prefix of what a node keeps in its ``context.state``.
STATE_PREFIX = "fedmoe."
