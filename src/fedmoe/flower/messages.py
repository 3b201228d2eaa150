"""The names both apps agree on: message types and the records in a message's content.

Server -> node, and what comes back:

========================  ==========================  ================================
message type              server sends                node replies
========================  ==========================  ================================
``query.hello``           nothing                     ``node``, ``partition-params``
``train``                 ``global`` or               ``update`` + ``metrics``, or
                          ``clusters.*``, ``fedavg``  ``declined`` (opt-out)
``evaluate``              ``global`` or               ``metrics``, or ``declined``
                          ``clusters.*``, ``fedavg``
``train.personalise``     ``global`` (best model),    ``metrics``
                          ``clusters.*`` (IFCA)
``evaluate.personalise``  nothing                     ``metrics``
========================  ==========================  ================================

``clusters.0``, ``clusters.1``, ... hold IFCA's cluster models (``clustered.enabled``):
a ``train`` reply to them also holds ``cluster`` (the model trained) in its ``metrics``.

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
