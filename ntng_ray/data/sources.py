"""Pretraining corpora as a HF ``datasets.Dataset`` with one column, "text".

Three sources: the synthetic grammar (no files needed), local files (text, JSON lines,
parquet; paths or globs) and the HF hub. Every problem a user can fix (a missing file, a glob
that matches nothing, an unknown extension, a missing column, an unreachable hub) is an
``NtngError`` that names the offending thing.
"""

from __future__ import annotations

import glob
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

from ntng_ray.config import DataConfig
from ntng_ray.data.synthetic import generate_documents
from ntng_ray.errors import NtngError

TEXT = "text"
FORMAT_BY_EXTENSION = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
GLOB_CHARS = frozenset("*?[")


def load_corpus(cfg: DataConfig) -> datasets.Dataset:
    """The corpus ``cfg`` names, as a Dataset with one non-empty "text" column."""
    if cfg.source == "synthetic":
        docs = generate_documents(cfg.synthetic.num_documents, cfg.synthetic.seed)
        return datasets.Dataset.from_dict({TEXT: docs})
    if cfg.source == "files":
        corpus, field = _load_files(cfg)
    else:
        corpus, field = _load_hub(cfg), cfg.text_field
    corpus = _drop_empty(_text_column(corpus, field))
    if len(corpus) == 0:
        raise NtngError(f"data.source={cfg.source}: the corpus has no non-empty documents")
    return corpus


def expand_files(patterns: list[str]) -> list[Path]:
    """Paths and globs -> existing files, in a stable order; names any that fail."""
    files: list[Path] = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        if GLOB_CHARS & set(expanded):
            matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise NtngError(f"data.files: the pattern {pattern!r} matches no files")
            files.extend(matches)
            continue
        path = Path(expanded)
        if not path.exists():
            raise NtngError(f"data.files: {pattern!r} does not exist")
        if not path.is_file():
            raise NtngError(f"data.files: {pattern!r} is not a file (for a folder use a glob)")
        files.append(path)
    return files


def file_format(files: list[Path], configured: str) -> str:
    """The ``datasets`` builder for ``files``: the configured one, or one read from extensions."""
    if configured != "auto":
        return configured
    allowed = ", ".join(FORMAT_BY_EXTENSION)
    formats = set()
    for path in files:
        fmt = FORMAT_BY_EXTENSION.get(path.suffix.lower())
        if fmt is None:
            raise NtngError(
                f"data.files: cannot tell the format of {str(path)!r} from its extension "
                f"{path.suffix!r}; allowed: {allowed} (or set data.format)"
            )
        formats.add(fmt)
    if len(formats) > 1:
        raise NtngError(
            f"data.files mixes formats ({', '.join(sorted(formats))}); use one format per run"
        )
    return formats.pop()


def _load_files(cfg: DataConfig) -> tuple[datasets.Dataset, str]:
    """The files' dataset and its text column (plain text files have only "text").

    Arrow conversions go to the project's cache, not the user's HF cache, as they are ours.
    """
    files = expand_files(cfg.files)
    fmt = file_format(files, cfg.format)
    try:
        corpus = datasets.load_dataset(
            fmt,
            data_files=[str(p.resolve()) for p in files],
            split="train",
            cache_dir=str(cfg.resolved_cache_dir() / "hf_datasets"),
        )
    except DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise NtngError(f"data.files: could not read the files as {fmt}: {cause}") from None
    return corpus, TEXT if fmt == "text" else cfg.text_field


def _load_hub(cfg: DataConfig) -> datasets.Dataset:
    """Load from the hub (or the local HF cache), turning offline failures into advice."""
    name = cfg.hub_name
    try:
        return datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split)
    except DatasetNotFoundError as exc:
        raise NtngError(
            f"data.hub_name: dataset {name!r} was not found on the hub: {exc}"
        ) from None
    except ConnectionError as exc:
        raise NtngError(
            f"data.hub_name: could not reach the Hugging Face hub for dataset {name!r} ({exc}). "
            "This machine may be offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set, or no "
            "network). Use data.source=files with local copies of the data instead."
        ) from None
    except ValueError as exc:
        raise NtngError(
            f"data.hub_name {name!r} (hub_config={cfg.hub_config!r}, "
            f"hub_split={cfg.hub_split!r}): {exc}"
        ) from None


def _text_column(corpus: datasets.Dataset, field: str) -> datasets.Dataset:
    """Keep only the text column, named "text"; a missing or non-string column is an error."""
    if field not in corpus.column_names:
        raise NtngError(
            f"data.text_field: column {field!r} not found; the data has columns "
            f"{corpus.column_names}"
        )
    feature = corpus.features[field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise NtngError(f"data.text_field: column {field!r} holds {feature}, not text")
    corpus = corpus.select_columns([field])
    return corpus if field == TEXT else corpus.rename_column(field, TEXT)


def _non_empty(texts: list[str | None]) -> list[bool]:
    return [bool(text and text.strip()) for text in texts]


def _drop_empty(corpus: datasets.Dataset) -> datasets.Dataset:
    """Blank lines (text files) and empty documents carry no tokens; drop them."""
    return corpus.filter(_non_empty, input_columns=TEXT, batched=True, desc="Drop empty documents")
