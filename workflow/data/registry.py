"""Registry of raw data sources and of the tokenized datasets built from them.

``SOURCES[name]`` says where raw files come from (public URL, sha256 and/or size);
they are downloaded to ``{data_dir}/raw/{source}/{filename}`` by rules/download.smk.
``DATASETS[name]`` says how a dataset is made from a source: tokenizer kind, split
recipe and default options; workflow.tokenize writes ``{data_dir}/tokens/{name}/`` (with
non-default token options ``{name}-{hash}/``: :func:`tokens_dir_name`).

Each dataset module of workflow/data/datasets/ declares its ``SOURCES`` and ``DATASETS``
(:mod:`workflow.data.spec` types, the preparer included); one line of :data:`DATASET_MODULES`
registers it. Adding a dataset: docs/architecture.md ("Adding a dataset").

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

import hashlib
import json
import os
from typing import Any, Mapping

from workflow.data.datasets import custom_text, enwik8, fineweb, multi30k, openwebtext, shakespeare
from workflow.data.spec import Dataset, Source, SourceFile, UnknownNameError, unknown_name
from workflow.data.tokenizers import GPT2_RANKS, GPT2_RANKS_FILE, GPT2_SOURCE, TOKENIZERS

__all__ = ["DATASETS", "SOURCES", "Dataset", "Source", "SourceFile", "UnknownNameError", "GPT2_RANKS_FILE",
           "GPT2_SOURCE"]

#: The dataset modules, each with its ``SOURCES`` and ``DATASETS`` (one line registers one).
DATASET_MODULES = (
    shakespeare,
    enwik8,
    fineweb,
    openwebtext,
    custom_text,
    multi30k,
)

SOURCES: dict[str, Source] = {src.name: src for src in (GPT2_RANKS, *(s for m in DATASET_MODULES for s in m.SOURCES))}
DATASETS: dict[str, Dataset] = {ds.name: ds for m in DATASET_MODULES for ds in m.DATASETS}

COMMON_OPTIONS = ("mirror", "raw_files")
#: Options that change where raw files come from or how fast a dataset is tokenized, never its
#: tokens: they are not part of the tokens' folder name (:func:`tokens_dir_name`).
RUNTIME_OPTIONS = ("mirror", "num_proc", "batch_docs", "chunk_bytes")

def _check_registry() -> None:
    """Every dataset names a registered source and tokenizer (a typo fails on import, naming it)."""
    for ds in DATASETS.values():
        if ds.source is not None and ds.source not in SOURCES:
            raise unknown_name(f"source of dataset {ds.name!r}:", ds.source, SOURCES)
        if ds.tokenizer not in TOKENIZERS:
            raise unknown_name(f"tokenizer of dataset {ds.name!r}:", ds.tokenizer, TOKENIZERS)


_check_registry()


def get_source(source: str) -> Source:
    """The :class:`Source` named ``source``. Raises UnknownNameError listing known sources."""
    try:
        return SOURCES[source]
    except KeyError:
        raise unknown_name("source", source, SOURCES) from None


def get_dataset(dataset: str) -> Dataset:
    """The :class:`Dataset` named ``dataset``. Raises UnknownNameError listing known datasets."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise unknown_name("dataset", dataset, DATASETS) from None


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
            raise unknown_name(f"option datasets.{dataset}.", key, merged)
        merged[key] = value
    return merged


def _source_specs(source: str, options: Mapping[str, Any] | None) -> list[SourceFile]:
    return get_source(source).file_specs(options)


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
    return get_source(source).file(filename, options)


def dataset_source(dataset: str) -> str | None:
    """Source name of ``dataset`` (None for datasets without downloaded raw files)."""
    return get_dataset(dataset).source


def dataset_raw_dir(dataset: str, data_dir: str, options: Mapping[str, Any] | None = None) -> str:
    """The ``--raw-dir`` that workflow.tokenize gets for ``dataset``.

    ``{data_dir}/raw/{source}``; for ``custom_text`` the configured ``folder``; for
    ``openwebtext`` ``{data_dir}/raw/openwebtext`` (used only as the folder of local files).
    """
    ds = get_dataset(dataset)
    if ds.raw_dir_fn is not None:
        return ds.raw_dir_fn(dataset_options(dataset, options))
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
    if ds.local_inputs_fn is not None:
        inputs += ds.local_inputs_fn(opts)
    if ds.needs_gpt2_ranks:
        inputs.append(os.path.join(data_dir, "raw", GPT2_SOURCE, GPT2_RANKS_FILE))
    return inputs


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
