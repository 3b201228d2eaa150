"""Datasets as numpy arrays, and how they are split among clients.

Named datasets (:mod:`fedmoe.data.catalogue`): :func:`load_dataset` finds a dataset's
files (see :mod:`fedmoe.data.registry` for the lookup order), decodes them once
(:mod:`fedmoe.data.files`, :mod:`fedmoe.data.sources`) and checks them;
:func:`dataset_info` summarises one; :func:`fetch_dataset` downloads and verifies one.
Your own files (:mod:`fedmoe.data.userdata`): names ``npz:PATH``, ``csv:PATH``,
``images:DIR``, ``agnews:DIR`` and ``clients:DIR`` load them with the same
:func:`load_dataset`, read as :class:`ReadOptions` says.
Partitions: :func:`make_partition` splits a dataset's labels among clients
(see :mod:`fedmoe.data.partition`), or keeps the clients the data comes split among
(:class:`NaturalSpec`, see :mod:`fedmoe.data.natural`).
"""

from fedmoe.data.catalogue import DATASETS, DatasetSpec, get_spec
from fedmoe.data.dataset import ArrayDataset, ClientRows
from fedmoe.data.fetch import FetchResult, fetch_dataset
from fedmoe.data.files import FileSpec
from fedmoe.data.natural import NaturalSpec
from fedmoe.data.options import ReadOptions
from fedmoe.data.partition import (
    ClientSplit,
    DirichletSpec,
    IIDSpec,
    MajoritySpec,
    Partition,
    PartitionSpec,
    ShardsSpec,
    Sizes,
    make_partition,
    opt_out_mask,
    partition_to_json,
)
from fedmoe.data.registry import clear_cache, dataset_info, load_dataset

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "ClientRows",
    "ClientSplit",
    "DatasetSpec",
    "DirichletSpec",
    "FetchResult",
    "FileSpec",
    "IIDSpec",
    "MajoritySpec",
    "NaturalSpec",
    "Partition",
    "PartitionSpec",
    "ReadOptions",
    "ShardsSpec",
    "Sizes",
    "clear_cache",
    "dataset_info",
    "fetch_dataset",
    "get_spec",
    "load_dataset",
    "make_partition",
    "opt_out_mask",
    "partition_to_json",
]
