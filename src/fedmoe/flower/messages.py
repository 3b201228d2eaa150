"""The names both apps agree on: message types and the records in a message's content.

Server -> node, and what comes back:

========================  ===============================  ===========================
message type              server sends                     node replies
========================  ===============================  ===========================
``query.hello``           nothing                          ``node``, ``partition-params``
``train``                 ``round`` (method, round),       ``update`` + ``metrics``, or
                          ``server`` (or ``server.*``)     ``declined`` (opt-out)
``evaluate``              ``round``, ``server``            ``metrics``, or ``declined``
``train.personalise``     ``federated.<method>`` (or       ``metrics``
                          ``federated.<method>.*``) for
                          each federated method,
                          ``best-rounds``
``evaluate.personalise``  nothing                          ``metrics``, ``variants``
========================  ===============================  ===========================

A method's server model is one ArrayRecord (``server``) or, with several (IFCA's
clusters), ``server.0``, ``server.1``, ... (see :mod:`fedmoe.flower.records`). A
``train`` reply's ``metrics`` hold ``num-examples`` and, for a method whose clients pick
one of several server models, ``choice``. ``round`` is a ConfigRecord holding
``method``, ``round`` and ``best-round`` (the best round so far, -1 before the first
check); ``best-rounds`` a ConfigRecord of each federated method's best round;
``metrics`` a MetricRecord (every reply's ``metrics`` also holds ``threads``, the node's
torch thread count); ``variants`` a ConfigRecord of each method's variant labels;
``node`` and ``partition-params`` are ConfigRecords of metadata; ``declined`` a
ConfigRecord holding ``reason``.
"""

HELLO = "query.hello"
TRAIN = "train"
VALIDATE = "evaluate"
PERSONALISE = "train.personalise"
EVALUATE = "evaluate.personalise"

ROUND = "round"
#: In ``round``: the federation's best round so far.
BEST_ROUND = "best-round"
BEST_ROUNDS = "best-rounds"
SERVER = "server"
#: Prefix of the records holding each federated method's best server model(s).
FEDERATED = "federated"
UPDATE = "update"
METRICS = "metrics"
VARIANTS = "variants"
DECLINED = "declined"
NODE = "node"
PARTITION = "partition-params"

#: Key prefix of what a node keeps in its ``context.state``.
STATE_PREFIX = "fedmoe."
