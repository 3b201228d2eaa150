"""The named datasets fedmoe knows: :data:`DATASETS` and :func:`get_spec`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedmoe.data import sources
from fedmoe.data.files import BuiltinSource, CifarFiles, FileFormat, FileSpec, IdxFiles
from fedmoe.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset and what loading it must produce.

    ``train_count`` / ``test_count`` examples of shape ``example_shape`` and dtype
    ``dtype``; labels in ``0 .. num_classes - 1``. ``url_base`` is the canonical download
    directory (``None``: not downloadable, ``manual_download`` says how to get it);
    ``install_hint`` is another way to get it, shown when it is missing.
    """

    name: str
    title: str
    source: FileFormat | BuiltinSource
    train_count: int
    test_count: int
    example_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] = field(default=())
    dtype: str = "uint8"
    url_base: str | None = None
    install_hint: str | None = None
    manual_download: str | None = None

    def how_to_get(self) -> str:
        """One sentence telling the user how to obtain the files."""
        if self.url_base is None:
            return self.manual_download or f"{self.name} cannot be downloaded automatically"
        ways = [f"`fedmoe data fetch {self.name}`"]
        if self.install_hint:
            ways.append(f"`{self.install_hint}`")
        return f"get it with {' or '.join(ways)}"


def idx_files(
    prefix: str = "",
    *,
    test: str = "t10k",
    transpose: bool = False,
    pinned: Mapping[str, tuple[str, int]] | None = None,
) -> IdxFiles:
    """The four IDX files ``<prefix>{train,<test>}-{images-idx3,labels-idx1}-ubyte``."""

    def spec(name: str) -> FileSpec:
        sha256, size = (pinned or {}).get(name, (None, None))
        return FileSpec(prefix + name, sha256, size)

    return IdxFiles(
        train_images=spec("train-images-idx3-ubyte"),
        train_labels=spec("train-labels-idx1-ubyte"),
        test_images=spec(f"{test}-images-idx3-ubyte"),
        test_labels=spec(f"{test}-labels-idx1-ubyte"),
        transpose=transpose,
    )


_FASHION_MNIST_SHA256 = {
    # Decompressed contents, measured on Debian's dataset-fashion-mnist files.
    "train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47040016,
    ),
    "train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60008,
    ),
    "t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7840016,
    ),
    "t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10008,
    ),
}

_DIGIT_NAMES = tuple(str(d) for d in range(10))
_EMNIST_BALANCED_NAMES = (
    _DIGIT_NAMES + tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)) + tuple("abdefghnqrt")
)
_EMNIST_MANUAL = (
    "EMNIST is not fetched automatically: download"
    " https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip, unzip it and put"
    " gzip/emnist-{split}-*-ubyte.gz in a directory named emnist-{split} under"
    " $FEDMOE_DATA or the data_dir you pass"
)
_CIFAR100_NAMES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def _emnist(split: str, train: int, test: int, names: tuple[str, ...]) -> DatasetSpec:
    return DatasetSpec(
        name=f"emnist-{split}",
        title=f"EMNIST {split} (NIST handwritten characters, 28x28 greyscale)",
        source=idx_files(f"emnist-{split}-", test="test", transpose=True),
        train_count=train,
        test_count=test,
        example_shape=(1, 28, 28),
        num_classes=len(names),
        class_names=names,
        manual_download=_EMNIST_MANUAL.format(split=split),
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            title="MNIST handwritten digits (28x28 greyscale)",
            source=idx_files(),
            train_count=60000,
            test_count=10000,
            example_shape=(1, 28, 28),
            num_classes=10,
            class_names=_DIGIT_NAMES,
            url_base="https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        DatasetSpec(
            name="fashion-mnist",
            title="Fashion-MNIST Zalando article images (28x28 greyscale)",
            source=idx_files(pinned=_FASHION_MNIST_SHA256),
            train_count=60000,
            test_count=10000,
            example_shape=(1, 28, 28),
            num_classes=10,
            class_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            url_base="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            install_hint="apt-get install dataset-fashion-mnist",
        ),
        _emnist("digits", 240000, 40000, _DIGIT_NAMES),
        _emnist("balanced", 112800, 18800, _EMNIST_BALANCED_NAMES),
        DatasetSpec(
            name="cifar10",
            title="CIFAR-10 tiny images (32x32 colour)",
            source=CifarFiles(FileSpec("cifar-10-python.tar"), sources.CIFAR10),
            train_count=50000,
            test_count=10000,
            example_shape=(3, 32, 32),
            num_classes=10,
            class_names=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            url_base="https://www.cs.toronto.edu/~kriz/",
        ),
        DatasetSpec(
            name="cifar100",
            title="CIFAR-100 tiny images, fine labels (32x32 colour)",
            source=CifarFiles(FileSpec("cifar-100-python.tar"), sources.CIFAR100),
            train_count=50000,
            test_count=10000,
            example_shape=(3, 32, 32),
            num_classes=100,
            class_names=_CIFAR100_NAMES,
            url_base="https://www.cs.toronto.edu/~kriz/",
        ),
        DatasetSpec(
            name="mnist1d",
            title="MNIST-1D signals (length 40), generated by the mnist1d package, seed 42",
            source=BuiltinSource(sources.generate_mnist1d),
            train_count=4000,
            test_count=1000,
            example_shape=(1, 40),
            num_classes=10,
            class_names=_DIGIT_NAMES,
            dtype="float32",
        ),
        DatasetSpec(
            name="digits",
            title="scikit-learn 8x8 digits (first 1437 train, last 360 test)",
            source=BuiltinSource(sources.load_sklearn_digits),
            train_count=sources.DIGITS_TRAIN_SIZE,
            test_count=1797 - sources.DIGITS_TRAIN_SIZE,
            example_shape=(1, 8, 8),
            num_classes=10,
            class_names=_DIGIT_NAMES,
        ),
    )
}
"""The registry, by canonical name. Tests may add or replace entries (monkeypatch)."""

_ALIASES = {"fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (case-insensitive, ``_`` same as ``-``)."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return DATASETS[key]
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
