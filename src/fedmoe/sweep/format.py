"""The sweep.csv contract shared by the sweep runner (writer) and the report (reader).

Columns: ``cell``, one column per grid key as given, then :data:`COLUMNS`. Grid keys may
use the short names in :data:`ALIASES`; the ``method`` column holds the keys of the
runs' ``results.json`` ``methods`` (whose entries name and describe themselves). No
torch import here: the report stays light.
"""

#: Short grid keys and the config entries they stand for.
ALIASES = {"p": "partition.p", "opt_out": "partition.opt_out", "alpha": "partition.alpha"}

#: The columns after the grid keys that every sweep.csv has.
COLUMNS = (
    "seed",
    "method",
    "local_test_acc",
    "global_test_acc",
    "local_test_std",
    "global_test_std",
    "run",
)
