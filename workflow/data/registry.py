"""Registry of raw data sources and of the tokenized datasets built from them.

``SOURCES[name]`` says where raw files come from (public URL, sha256 and/or size);
they are downloaded to ``{data_dir}/raw/{source}/{filename}`` by rules/download.smk.
``DATASETS[name]`` says how a dataset is made from a source: tokenizer kind, split
recipe and default options; workflow.tokenize writes ``{data_dir}/tokens/{name}/`` (with
non-default token options ``{name}-{hash}/``: :func:`tokens_dir_name`).

Per-dataset options come from the study config (``datasets: {name: {...}}``) and are
merged over :attr:`Dataset.defaults` by :func:`dataset_options`; every dataset also
accepts ``mirror`` (a per-dataset mirror base) and ``raw_files`` (``{filename: {sha256,
bytes}}`` overrides of the registry's checks, e.g. for a test archive on a mirror).

The functions used by the Snakemake rules (rules/common.smk, download.smk, tokenize.smk):
:func:`source_files`, :func:`source_file`, :func:`dataset_source`,
:func:`dataset_raw_inputs`, :func:`dataset_raw_dir`, :func:`dataset_outputs`,
:func:`source_options`, :func:`source_mirror`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

GPT2_SOURCE = "gpt2"
GPT2_RANKS_FILE = "r50k_base.tiktoken"


class UnknownNameError(KeyError):
    """An unknown dataset / source / file / option name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SourceFile:
    """One raw file: its name under ``raw/{source}/``, public URL and checks (None = unchecked)."""

    filename: str
    url: str
    sha256: str | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class Source:
    """Where the raw files of a source come from.

    ``files`` is the static file list; ``files_fn(options)`` (if set) computes it from the
    dataset options instead (FineWeb: number of shards). ``hf_repo`` marks a Hugging Face
    Hub repo, downloaded with ``huggingface_hub.hf_hub_download`` unless a mirror is set.
    """

    name: str
    files: tuple[SourceFile, ...] = ()
    files_fn: Callable[[Mapping[str, Any]], list[SourceFile]] | None = None
    homepage: str = ""
    license: str = ""
    hf_repo: str | None = None
    hf_repo_type: str = "dataset"


@dataclass(frozen=True)
class Dataset:
    """How a tokenized dataset is made.

    Attributes:
        name: key in :data:`DATASETS` and folder name under ``{data_dir}/tokens/``.
        source: key in :data:`SOURCES` (None: no downloaded raw files, e.g. user folders).
        tokenizer: ``char`` | ``byte`` | ``gpt2`` | ``charset`` | ``pretokenized``.
        splits: split names in output order (``train``, ``val``[, ``test``]).
        split_spec: human-readable split recipe (also written to docs/datasets.md).
        defaults: default options (the only keys a study may set, besides the common ones).
        static_split_files: True when the split files are ``{split}.bin`` in the token folder
            (False for FineWeb, whose meta.json points at the raw shards).
        needs_gpt2_ranks: the GPT-2 BPE ranks file is a raw input (offline tiktoken).
    """

    name: str
    source: str | None
    tokenizer: str
    splits: tuple[str, ...]
    split_spec: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    static_split_files: bool = True
    needs_gpt2_ranks: bool = False
    description: str = ""


COMMON_OPTIONS = ("mirror", "raw_files")
#: Options that change where raw files come from or how fast a dataset is tokenized, never its
#: tokens: they are not part of the tokens' folder name (:func:`tokens_dir_name`).
RUNTIME_OPTIONS = ("mirror", "num_proc", "batch_docs", "chunk_bytes")

FINEWEB_URL = "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main/{}"
OPENWEBTEXT_HF_NAME = "Skylion007/openwebtext"
OPENWEBTEXT_HF_REVISION = "refs/convert/parquet"
#: documents of OpenWebText (nanoGPT data/openwebtext/readme.md: 8,009,762 train + 4,007 val)
OPENWEBTEXT_DOCUMENTS = 8_013_769
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{}"


def _fineweb_files(options: Mapping[str, Any]) -> list[SourceFile]:
    n = options.get("train_shards", 9)
    if not isinstance(n, int) or not 1 <= n <= 103:
        raise ValueError(f"datasets.fineweb10B.train_shards: must be an integer in 1..103, got {n!r}")
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n + 1)]
    return [SourceFile(name, FINEWEB_URL.format(name)) for name in names]


SOURCES: dict[str, Source] = {
    "tinyshakespeare": Source(
        name="tinyshakespeare",
        files=(SourceFile(
            "input.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            bytes=1115394),),
        homepage="https://github.com/karpathy/char-rnn",
        license="char-rnn repo MIT; text public domain",
    ),
    GPT2_SOURCE: Source(
        name=GPT2_SOURCE,
        files=(SourceFile(
            GPT2_RANKS_FILE,
            "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
            sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
            bytes=835554),),
        homepage="https://github.com/openai/tiktoken",
        license="MIT (GPT-2 BPE ranks, tiktoken r50k_base = gpt2)",
    ),
    "enwik8": Source(
        name="enwik8",
        files=(SourceFile("enwik8.zip", "http://mattmahoney.net/dc/enwik8.zip", bytes=36445475),),
        homepage="http://mattmahoney.net/dc/textdata.html",
        license="Wikipedia text, CC BY-SA (Hutter Prize test data)",
    ),
    "fineweb10B": Source(
        name="fineweb10B",
        files_fn=_fineweb_files,
        homepage="https://huggingface.co/datasets/kjj0/fineweb10B-gpt2",
        license="FineWeb: ODC-By 1.0 (HuggingFaceFW/fineweb); CommonCrawl terms of use",
        hf_repo="kjj0/fineweb10B-gpt2",
    ),
    "multi30k": Source(
        name="multi30k",
        files=tuple(SourceFile(name, MULTI30K_URL.format(name), sha256=sha) for name, sha in (
            ("train.en.gz", "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f"),
            ("train.de.gz", "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
            ("val.en.gz", "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28"),
            ("val.de.gz", "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
            ("test_2016_flickr.en.gz", "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9"),
            ("test_2016_flickr.de.gz", "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"),
        )),
        homepage="https://github.com/multi30k/dataset",
        license="research and education use (derived from Flickr30K)",
    ),
}

DATASETS: dict[str, Dataset] = {
    "shakespeare_char": Dataset(
        name="shakespeare_char", source="tinyshakespeare", tokenizer="char", splits=("train", "val"),
        split_spec="first 90 % of characters train, last 10 % val (nanoGPT shakespeare_char)",
        defaults={"train_fraction": 0.9},
        description="tiny Shakespeare, character level, vocabulary = sorted set of characters",
    ),
    "shakespeare_gpt2": Dataset(
        name="shakespeare_gpt2", source="tinyshakespeare", tokenizer="gpt2", splits=("train", "val"),
        split_spec="first 90 % of characters train, last 10 % val, each encoded (nanoGPT shakespeare)",
        defaults={"train_fraction": 0.9}, needs_gpt2_ranks=True,
        description="tiny Shakespeare, GPT-2 BPE",
    ),
    "enwik8": Dataset(
        name="enwik8", source="enwik8", tokenizer="byte", splits=("train", "val", "test"),
        split_spec="bytes: first 90 % train, next 5 % val, last 5 % test (90M/5M/5M)",
        defaults={"member": "enwik8", "expected_bytes": 100_000_000, "magic": "<mediawiki",
                  "fractions": [0.9, 0.05, 0.05]},
        description="first 10^8 bytes of an English Wikipedia XML dump, byte level (vocab 256)",
    ),
    "fineweb10B": Dataset(
        name="fineweb10B", source="fineweb10B", tokenizer="pretokenized", splits=("train", "val"),
        split_spec="shard fineweb_val_000000 is val; fineweb_train_000001..N train (N = train_shards)",
        defaults={"train_shards": 9}, static_split_files=False,
        description="FineWeb 10B-token sample, GPT-2 tokens, 100M tokens per shard (modded-nanogpt)",
    ),
    "openwebtext": Dataset(
        name="openwebtext", source=None, tokenizer="gpt2", splits=("train", "val"),
        split_spec="datasets train_test_split(test_size=0.0005, seed=2357) of documents (nanoGPT)",
        # The Hub repo's default branch holds a loading script (openwebtext.py), which
        # datasets >= 4 refuses to run; the Hub's parquet conversion of the same data
        # (branch refs/convert/parquet, config plain_text) loads without code.
        defaults={"hf_name": OPENWEBTEXT_HF_NAME, "hf_revision": OPENWEBTEXT_HF_REVISION,
                  "expected_documents": OPENWEBTEXT_DOCUMENTS,
                  "data_files": None, "format": "json", "text_field": "text",
                  "val_fraction": 0.0005, "seed": 2357, "num_proc": None, "batch_docs": 256},
        needs_gpt2_ranks=True,
        description="OpenWebText, GPT-2 BPE, <|endoftext|> after every document",
    ),
    "custom_text": Dataset(
        name="custom_text", source=None, tokenizer="charset", splits=("train", "val"),
        split_spec="documents (separated by blank lines) in sorted file order: first 90 % train, last 10 % val",
        defaults={"folder": None, "pattern": "*.txt", "charset": "0123456789+-HBL.\n",
                  "bos": "<|bos|>", "vocab_size": 32, "val_fraction": 0.1,
                  "chunk_bytes": 4 << 20},
        description="user .txt files, fixed character set, <|bos|> before every document",
    ),
    "multi30k_en_de": Dataset(
        name="multi30k_en_de", source="multi30k", tokenizer="gpt2", splits=("train", "val", "test"),
        split_spec="official train / val / test_2016_flickr; one pair = '{en}\\n{de}' + <|endoftext|>",
        defaults={"pair_format": "{en}\n{de}"}, needs_gpt2_ranks=True,
        description="Multi30k task 1 English-German caption pairs as a language-modeling corpus, GPT-2 BPE",
    ),
}


def _unknown(kind: str, name: str, known) -> UnknownNameError:
    return UnknownNameError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


def get_source(source: str) -> Source:
    """The :class:`Source` named ``source``. Raises UnknownNameError listing known sources."""
    try:
        return SOURCES[source]
    except KeyError:
        raise _unknown("source", source, SOURCES) from None


def get_dataset(dataset: str) -> Dataset:
    """The :class:`Dataset` named ``dataset``. Raises UnknownNameError listing known datasets."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise _unknown("dataset", dataset, DATASETS) from None


def dataset_options(dataset: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``dataset`` updated with the study's ``options`` (``config["datasets"][dataset]``).

    Raises:
        UnknownNameError: unknown dataset, or an option key the dataset does not have
            (message: ``datasets.<name>.<key>`` and the known keys).
    """
    ds = get_dataset(dataset)
    merged: dict[str, Any] = {"mirror": None, "raw_files": {}, **ds.defaults}
    for key, value in (options or {}).items():
        if key not in merged:
            raise _unknown(f"option datasets.{dataset}.", key, merged)
        merged[key] = value
    return merged


def _source_specs(source: str, options: Mapping[str, Any] | None) -> list[SourceFile]:
    src = get_source(source)
    options = options or {}
    files = list(src.files_fn(options) if src.files_fn else src.files)
    overrides = options.get("raw_files") or {}
    names = {f.filename for f in files}
    for name in overrides:
        if name not in names:
            raise _unknown(f"file in raw_files of source {source!r}:", name, names)
    out = []
    for f in files:
        o = overrides.get(f.filename) or {}
        out.append(replace(f, sha256=o.get("sha256", f.sha256), bytes=o.get("bytes", f.bytes)))
    return out


def source_files(source: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """File names of ``source`` (downloaded to ``{data_dir}/raw/{source}/{name}``).

    ``options`` are the dataset options (FineWeb: ``train_shards``). Raises UnknownNameError.
    """
    return [f.filename for f in _source_specs(source, options)]


def source_file(source: str, filename: str, options: Mapping[str, Any] | None = None) -> SourceFile:
    """URL and checks of one raw file, with the ``raw_files`` overrides of ``options`` applied.

    Raises:
        UnknownNameError: unknown source or file name (lists the known ones).
    """
    specs = _source_specs(source, options)
    for spec in specs:
        if spec.filename == filename:
            return spec
    # FineWeb: a file beyond the configured shard count is still a valid file of the source.
    if source == "fineweb10B":
        for spec in _fineweb_files({"train_shards": 103}):
            if spec.filename == filename:
                return spec
    raise _unknown(f"file of source {source!r}:", filename, [s.filename for s in specs])


def dataset_source(dataset: str) -> str | None:
    """Source name of ``dataset`` (None for datasets without downloaded raw files)."""
    return get_dataset(dataset).source


def dataset_raw_dir(dataset: str, data_dir: str, options: Mapping[str, Any] | None = None) -> str:
    """The ``--raw-dir`` that workflow.tokenize gets for ``dataset``.

    ``{data_dir}/raw/{source}``; for ``custom_text`` the configured ``folder``; for
    ``openwebtext`` ``{data_dir}/raw/openwebtext`` (used only as the folder of local files).
    """
    ds = get_dataset(dataset)
    opts = dataset_options(dataset, options)
    if ds.name == "custom_text":
        if not opts["folder"]:
            raise ValueError("datasets.custom_text.folder: not set (the folder of the .txt files)")
        return str(opts["folder"])
    return os.path.join(data_dir, "raw", ds.source or ds.name)


def dataset_raw_inputs(dataset: str, data_dir: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """Input files of the tokenize job of ``dataset``.

    ``{data_dir}/raw/{source}/{filename}`` for every file of the source, plus
    ``{data_dir}/raw/gpt2/r50k_base.tiktoken`` for GPT-2 BPE datasets (tiktoken offline);
    ``custom_text``: the ``pattern`` files of ``folder`` (sorted); ``openwebtext``: its
    local ``data_files`` if configured (otherwise the HF cache, no Snakemake input).

    Raises:
        UnknownNameError: unknown dataset / option.
        ValueError: ``custom_text`` without ``folder`` or without matching files.
    """
    ds = get_dataset(dataset)
    opts = dataset_options(dataset, options)
    inputs: list[str] = []
    if ds.source is not None:
        inputs += [os.path.join(data_dir, "raw", ds.source, f) for f in source_files(ds.source, opts)]
    elif ds.name == "custom_text":
        folder = dataset_raw_dir(dataset, data_dir, options)
        inputs += custom_text_files(folder, opts["pattern"])
    elif ds.name == "openwebtext" and opts["data_files"]:
        files = opts["data_files"]
        inputs += [files] if isinstance(files, str) else list(files)
    if ds.needs_gpt2_ranks:
        inputs.append(os.path.join(data_dir, "raw", GPT2_SOURCE, GPT2_RANKS_FILE))
    return inputs


def custom_text_files(folder: str, pattern: str = "*.txt") -> list[str]:
    """Sorted files matching ``pattern`` in ``folder``; ValueError naming both if none."""
    files = sorted(glob.glob(os.path.join(glob.escape(str(folder)), pattern)))
    if not files:
        raise ValueError(f"datasets.custom_text.folder: no files matching {pattern!r} in {folder}")
    return files


def study_meta_path(config: Mapping[str, Any], dataset: str | None = None) -> str:
    """``meta.json`` of a study's tokenized dataset (or of ``dataset``), in the folder the study's options
    of it name: ``{data_dir}/tokens/{tokens_dir_name}/meta.json``."""
    dataset = dataset or config["dataset"]
    return os.path.join(tokens_dir(dataset, config["data_dir"], (config.get("datasets") or {}).get(dataset)), "meta.json")


def dataset_outputs(dataset: str, data_dir: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """Output files of the tokenize job: meta.json plus the static ``{split}.bin`` files."""
    ds = get_dataset(dataset)
    folder = tokens_dir(dataset, data_dir, options)
    outs = [os.path.join(folder, "meta.json")]
    if ds.static_split_files:
        outs += [os.path.join(folder, f"{split}.bin") for split in ds.splits]
    return outs


def token_options(dataset: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``dataset`` that change its tokens and differ from its defaults, sorted
    by key (``{}`` for the defaults, however they are spelled): what names its tokens' folder.

    Raises:
        UnknownNameError: unknown dataset or option.
    """
    merged = dataset_options(dataset, options)
    defaults = dataset_options(dataset)
    return {k: merged[k] for k in sorted(merged) if k not in RUNTIME_OPTIONS and merged[k] != defaults[k]}


def tokens_dir_name(dataset: str, options: Mapping[str, Any] | None = None) -> str:
    """Folder name of the tokens of ``dataset`` made with ``options``, under ``{data_dir}/tokens/``:
    ``{dataset}`` with the default options, else ``{dataset}-{sha256 of the token options, 12 hex}``,
    so two studies with different splits of one dataset never share (or rewrite) a folder."""
    key = token_options(dataset, options)
    if not key:
        return dataset
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return f"{dataset}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def tokens_dir(dataset: str, data_dir: str, options: Mapping[str, Any] | None = None) -> str:
    """``{data_dir}/tokens/{tokens_dir_name}``: the folder of meta.json and the split files."""
    return os.path.join(data_dir, "tokens", tokens_dir_name(dataset, options))


def tokens_dataset(name: str) -> str:
    """The dataset of a tokens folder name (:func:`tokens_dir_name`): the part before ``-``."""
    return name.split("-", 1)[0]


def tokens_mismatch(meta: Mapping[str, Any], dataset: str, options: Mapping[str, Any] | None) -> str | None:
    """Why tokens described by ``meta`` (a meta.json) are not those of ``dataset`` with
    ``options``, or None when they are. Options that change no token (:data:`RUNTIME_OPTIONS`)
    and defaults however spelled do not count; tokens whose meta.json records no options count as
    made with the defaults."""
    if meta.get("dataset") != dataset:
        return f"they are dataset {meta.get('dataset')!r}, not {dataset!r}"
    try:
        made = token_options(dataset, meta.get("options"))
    except UnknownNameError as err:
        return f"they were made with options this version does not know ({err})"
    wanted = token_options(dataset, options)
    if made != wanted:
        return (f"they were made with datasets.{dataset} options {json.dumps(made, sort_keys=True)}, "
                f"but the study gives {json.dumps(wanted, sort_keys=True)} (defaults left out)")
    return None


def source_options(source: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset options that apply to the raw files of ``source`` in a study ``config``.

    The options of the study's own dataset (``config["dataset"]``) win when it uses
    ``source``; otherwise those of the first dataset (by name) that uses ``source`` and
    has options in ``config["datasets"]``. GPT-2 ranks take no options.
    """
    per_dataset = config.get("datasets") or {}
    candidates = sorted(name for name, ds in DATASETS.items() if ds.source == source)
    study_ds = config.get("dataset")
    if study_ds in candidates:
        candidates.remove(study_ds)
        candidates.insert(0, study_ds)
    for name in candidates:
        if per_dataset.get(name):
            return dataset_options(name, per_dataset[name])
    return {}


def source_mirror(source: str, config: Mapping[str, Any]) -> str | None:
    """Mirror for ``source``: a per-dataset ``mirror`` (see :func:`source_options`), else ``config["mirror"]``."""
    mirror = source_options(source, config).get("mirror")
    study_ds = config.get("dataset")
    if not mirror and source == GPT2_SOURCE and study_ds in DATASETS and DATASETS[study_ds].needs_gpt2_ranks:
        mirror = ((config.get("datasets") or {}).get(study_ds) or {}).get("mirror")
    return mirror or config.get("mirror") or None
