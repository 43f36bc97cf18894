"""Named evaluation protocols (split sizes) of the benchmarks used by the five papers.

A preset says how a dataset is split: the native split stored in the file (Wiki), or a
seeded random split of a single pool (``n_query`` queries, the rest retrieval, optionally a
random training subset of ``n_train`` retrieval items). The numbers and the paper stating
each of them are listed in ``docs/data.md``; ``sources`` repeats them here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DatasetPreset", "PRESETS", "get_preset", "detect_preset", "preset_names"]


@dataclass(frozen=True)
class DatasetPreset:
    """One evaluation protocol.

    Attributes
    ----------
    name : registry name
    split : ``"native"`` (use the split stored in the file) or ``"random"`` (seeded split)
    n_total : items in the standard release (None: unknown / any)
    n_classes : label columns of the standard release
    n_query : queries drawn at random (``"random"`` split)
    n_train : training subset drawn from the retrieval set; None -> train = retrieval
    dims : (image, text) feature dims of the common release (informative)
    sources : where the numbers come from
    aliases : other accepted names
    """

    name: str
    split: str
    n_total: int | None
    n_classes: int | None
    n_query: int | None
    n_train: int | None = None
    dims: tuple[int, ...] = ()
    description: str = ""
    sources: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_retrieval(self) -> int | None:
        if self.n_total is None or self.n_query is None:
            return None
        return self.n_total - self.n_query


PRESETS: dict[str, DatasetPreset] = {}


def _add(p: DatasetPreset) -> None:
    PRESETS[p.name] = p


_add(DatasetPreset(
    name="wiki",
    split="native",
    n_total=2866,
    n_classes=10,
    n_query=693,
    n_train=None,
    dims=(128, 10),
    description="Wikipedia image-text (Rasiwasia et al. 2010): native 2,173 train (= retrieval) / "
    "693 query; 128-d SIFT BoVW, 10-d LDA topics, 10 single-label classes",
    sources=(
        "ASCMH Sec. 4.1: 2,866 pairs, 128-d SIFT / 10-d topic vectors, 10 categories",
        "shared/datasets/README.md: standard split 2,173 train (= retrieval) / 693 query",
    ),
    aliases=("wikipedia",),
))
_add(DatasetPreset(
    name="mirflickr25k",
    split="random",
    n_total=20015,
    n_classes=24,
    n_query=2000,
    n_train=None,
    dims=(512, 1386),
    description="MIRFlickr-25K, 20,015 pairs with >= 20 tags: 2,000 random queries, 18,015 "
    "retrieval = training (the shallow-method protocol)",
    sources=(
        "ASFOH Sec. V-A: 18,015 / 2,000 training(retrieval) / query; 512-d GIST, 1,386-d BoW",
        "TA-ADCMH Sec. 4.1: 20,015 instances, 2,000 query, 18,015 retrieval",
        "ASCMH Sec. 4.1: 1,386 tags, 24 labels (no split sizes stated)",
    ),
    aliases=("mirflickr", "mirflickr-25k", "flickr25k", "mir-flickr", "mirflickr25k-text"),
))
_add(DatasetPreset(
    name="mirflickr25k-10k",
    split="random",
    n_total=20015,
    n_classes=24,
    n_query=2000,
    n_train=10000,
    dims=(4096, 1386),
    description="MIRFlickr-25K deep-method protocol: 2,000 queries, 18,015 retrieval, a random "
    "10,000-item training subset of the retrieval set",
    sources=(
        "TA-ADCMH Sec. 4.1: training set of 10,000 chosen at random within the retrieval set",
        "AMSH Sec. IV-I (comparison with deep methods): 18,015 retrieval, 10,000 training, 2,000 query",
    ),
    aliases=("mirflickr25k-deep",),
))
_add(DatasetPreset(
    name="mirflickr25k-amsh",
    split="random",
    n_total=16738,
    n_classes=24,
    n_query=836,
    n_train=None,
    dims=(150, 500),
    description="MIRFlickr-25K as in AMSH's shallow experiments: 16,738 items, 5% (836) query, "
    "15,902 training (= retrieval); 150-d edge histogram, 500-d text",
    sources=("AMSH Sec. IV-A and Table I: 16,738 total, 836 query, 15,902 training",),
))
_add(DatasetPreset(
    name="nuswide",
    split="random",
    n_total=186577,
    n_classes=10,
    n_query=2000,
    n_train=None,
    dims=(500, 1000),
    description="NUS-WIDE, 10 most frequent concepts, 186,577 pairs: 2,000 random queries, "
    "184,577 retrieval = training; 500-d BoVW, 1,000-d BoW",
    sources=(
        "ASFOH Sec. V-A: 186,577 instances, 184,577 / 2,000 training(retrieval) / query",
        "AMSH Sec. IV-A and Table I: 186,577 total, 2,000 query, 184,577 training",
    ),
    aliases=("nus-wide", "nus_wide", "nuswide-10", "nus"),
))
_add(DatasetPreset(
    name="nuswide-21",
    split="random",
    n_total=195834,
    n_classes=21,
    n_query=2000,
    n_train=10000,
    dims=(4096, 1000),
    description="NUS-WIDE, 21 most frequent concepts, 195,834 pairs (deep-method protocol): "
    "2,000 queries, 193,834 retrieval, 10,000 random training items",
    sources=(
        "TA-ADCMH Sec. 4.1: 195,834 pairs, 2,000 query, 193,834 retrieval, 10,000 training",
        "SDCH Sec. 4.1: 195,834 pairs, 21 concepts, 1,000-d BoW (no split sizes stated)",
        "AMSH Sec. IV-I: 195,834 pairs, 2,000 query, 10,500 training (not 10,000)",
    ),
    aliases=("nus-wide-21", "nuswide21"),
))
_add(DatasetPreset(
    name="iapr-tc12",
    split="random",
    n_total=20000,
    n_classes=255,
    n_query=2000,
    n_train=None,
    dims=(512, 2912),
    description="IAPR TC-12, 20,000 pairs, 255 labels: 2,000 random queries, 18,000 retrieval "
    "= training; 512-d GIST, 2,912-d BoW",
    sources=(
        "ASFOH Sec. V-A: 20,000 pairs, 255 labels, 18,000 / 2,000 training(retrieval) / query",
        "AMSH Sec. IV-A and Table I: 20,000 total, 2,000 query, 18,000 training",
        "SDCH Sec. 4.1 uses a 22-concept variant (no split sizes stated)",
    ),
    aliases=("iapr", "iaprtc12", "iapr_tc12", "iapr-tc-12"),
))


def preset_names() -> list[str]:
    return sorted(PRESETS)


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "")


def get_preset(name: str | DatasetPreset) -> DatasetPreset:
    """Look a preset up by name or alias (case-insensitive)."""
    if isinstance(name, DatasetPreset):
        return name
    key = _norm(str(name))
    for p in PRESETS.values():
        if key == p.name or key in p.aliases:
            return p
    raise ValueError(f"unknown preset {name!r}; valid presets: {preset_names()}")


def detect_preset(n_total: int | None = None, n_classes: int | None = None, filename: str = "") -> DatasetPreset | None:
    """Guess the preset from the pool size and class count, else from the file name.

    Shapes win: ``n = 2866, c = 10`` -> wiki, ``20015 / 24`` -> mirflickr25k,
    ``186577 / 10`` -> nuswide, ``195834 / 21`` -> nuswide-21, ``20000 / 255`` -> iapr-tc12,
    ``16738 / 24`` -> mirflickr25k-amsh. Otherwise a name containing "wiki", "mirflickr" /
    "flickr", "nus" or "iapr" selects the base preset of that family.
    """
    if n_total is not None and n_classes is not None:
        for p in PRESETS.values():
            if p.name in ("mirflickr25k-10k",):
                continue
            if p.n_total == n_total and p.n_classes == n_classes:
                return p
    fn = filename.lower()
    for token, pname in (("wiki", "wiki"), ("mirflickr", "mirflickr25k"), ("flickr", "mirflickr25k"),
                         ("nus", "nuswide"), ("iapr", "iapr-tc12")):
        if token in fn:
            return PRESETS[pname]
    return None
