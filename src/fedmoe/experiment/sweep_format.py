"""The sweep.csv contract shared by the sweep runner (writer) and the report (reader).

Columns: ``cell``, one column per grid key as given, then :data:`COLUMNS`. Grid keys may
use the short names in :data:`ALIASES`; the ``method`` column holds the keys of
:data:`METHOD_LABELS`. No torch import here: the report stays light.
"""

#: Display names of the methods a run can report (``method`` values in sweep.csv).
METHOD_LABELS = {
    "fedavg": "FedAvg",
    "local": "Local",
    "finetune": "FT",
    "moe": "MoE",
    "moe-staged": "MoE (staged)",
    "moe-plus": "MoE+",
    "ifca": "IFCA",
    "moe-ifca": "MoE+ IFCA",
    "centralised": "Centralised",
}

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
