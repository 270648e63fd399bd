"""What a dataset is made of: raw files (:class:`Source`) and a recipe (:class:`Dataset`).

Each dataset module (workflow/data/datasets/) declares its ``SOURCES`` and ``DATASETS`` with
these types; workflow.data.registry collects them by name. Torch-free and import-light: the
Snakemake process reads them at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping


class UnknownNameError(KeyError):
    """An unknown dataset / source / file / option name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known) -> UnknownNameError:
    """``UnknownNameError("unknown {kind} {name!r}; known: a, b, ...")`` (known names sorted)."""
    return UnknownNameError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


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
    dataset options instead (FineWeb: number of shards), and ``every_file_fn()`` lists every
    file the source has (a file beyond the configured ones is still one of the source's).
    ``hf_repo`` marks a Hugging Face Hub repo, downloaded with ``huggingface_hub.hf_hub_download``
    unless a mirror is set.
    """

    name: str
    files: tuple[SourceFile, ...] = ()
    files_fn: Callable[[Mapping[str, Any]], list[SourceFile]] | None = None
    every_file_fn: Callable[[], list[SourceFile]] | None = None
    homepage: str = ""
    license: str = ""
    hf_repo: str | None = None
    hf_repo_type: str = "dataset"

    def file_specs(self, options: Mapping[str, Any] | None = None) -> list[SourceFile]:
        """The files of the source for dataset ``options``, with their ``raw_files`` overrides
        (``{filename: {sha256, bytes}}``) applied.

        Raises:
            UnknownNameError: an override for a file the source does not have.
        """
        options = options or {}
        files = list(self.files_fn(options) if self.files_fn else self.files)
        overrides = options.get("raw_files") or {}
        names = {f.filename for f in files}
        for name in overrides:
            if name not in names:
                raise unknown_name(f"file in raw_files of source {self.name!r}:", name, names)
        out = []
        for f in files:
            o = overrides.get(f.filename) or {}
            out.append(replace(f, sha256=o.get("sha256", f.sha256), bytes=o.get("bytes", f.bytes)))
        return out

    def file(self, filename: str, options: Mapping[str, Any] | None = None) -> SourceFile:
        """URL and checks of one raw file (overrides of ``options`` applied).

        Raises:
            UnknownNameError: a file name the source does not have (lists the known ones).
        """
        specs = self.file_specs(options)
        for spec in specs:
            if spec.filename == filename:
                return spec
        for spec in self.every_file_fn() if self.every_file_fn else ():
            if spec.filename == filename:
                return spec
        raise unknown_name(f"file of source {self.name!r}:", filename, [s.filename for s in specs])


@dataclass(frozen=True)
class Dataset:
    """How a tokenized dataset is made.

    Attributes:
        name: key in ``workflow.data.registry.DATASETS`` and folder name under ``{data_dir}/tokens/``.
        source: name of a :class:`Source` (None: no downloaded raw files, e.g. user folders).
        tokenizer: a key of ``workflow.data.tokenizers.TOKENIZERS`` (``char`` | ``byte`` |
            ``gpt2`` | ``charset`` | ``pretokenized``).
        splits: split names in output order (``train``, ``val``[, ``test``]).
        split_spec: human-readable split recipe (also written to docs/datasets.md).
        defaults: default options (the only keys a study may set, besides the common ones).
        static_split_files: True when the split files are ``{split}.bin`` in the token folder
            (False for FineWeb, whose meta.json points at the raw shards).
        needs_gpt2_ranks: the GPT-2 BPE ranks file is a raw input (offline tiktoken).
        prepare: ``prepare(raw_dir, out_dir, opts, *, tokenizer_file, workers) -> dict``: writes
            the split files and returns the body of meta.json (workflow.data.prepare.prepare).
        raw_dir_fn: ``(opts) -> folder`` of the raw files when they are not downloaded
            (custom_text: its ``folder``); None = ``{data_dir}/raw/{source or name}``.
        local_inputs_fn: ``(opts) -> [paths]``: local input files of the tokenize job besides the
            source's (custom_text: its .txt files; openwebtext: its ``data_files``).
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
    prepare: Callable[..., dict] | None = None
    raw_dir_fn: Callable[[Mapping[str, Any]], str] | None = None
    local_inputs_fn: Callable[[Mapping[str, Any]], list[str]] | None = None
