"""Files: CSV, Excel workbooks, JSON lines or Parquet, at a path, a glob or any fsspec URL.

Every file the entity's ``path`` matches is read, in name order, into text chunks under
the source's own column names; the mapping step and the loader do the rest. (Web event
files partitioned by day are :mod:`lifecycle.extract.web`'s: they are assigned to
batches by arrival.)
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec

from lifecycle.extract import Batch
from lifecycle.parse import Chunk
from lifecycle.raw import RawEntity
from lifecycle.sources_file import EntityMap, Source, SourcesFile


def matching_files(path: str) -> list[str]:
    """Return the files `path` (a file, a glob or an fsspec URL) names, in name order."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isfile(root):
        return [fs.unstrip_protocol(root)]
    if not any(c in root for c in "*?["):
        return []
    return [fs.unstrip_protocol(p) for p in sorted(fs.glob(root)) if fs.isfile(p)]


def file_batch(entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile) -> Batch:
    """Return the batch of the files of `entity` (every row, placed by the loader's window)."""
    path = sources.path_of(src, emap)
    assert path, "the sources file validation requires a path"
    found = matching_files(path)
    if not found:
        return Batch(skip=f"no file matches {path}")
    return Batch(chunks=_chunks(entity, src, emap, sources, found))


def _chunks(
    entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile, found: list[str]
) -> Iterator[Chunk]:
    from lifecycle.extract import readers

    for url in found:
        with fsspec.open(url, "rb", compression=_compression(src, emap, sources)) as fh:
            if src.kind == "csv":
                fmt = sources.format_of(src, emap)
                yield from readers.read_csv_chunks(fh, _locator(url), fmt=fmt)
            elif src.kind == "excel":
                fmt = sources.format_of(src, emap)
                yield from readers.read_excel_chunks(fh, _locator(url), fmt=fmt)
            elif src.kind == "jsonl":
                stream = readers.as_utf8(fh, sources.format_of(src, emap).encoding)
                yield readers.read_jsonl(stream, _locator(url), entity.names)
            else:
                yield from readers.read_parquet_chunks(fh, _locator(url))


def _compression(src: Source, emap: EntityMap, sources: SourcesFile) -> str | None:
    name = sources.format_of(src, emap).compression
    return None if name == "none" else name


def _locator(url: str) -> str:
    """Return how a file is named in raw's _source and the quarantine (local: its path)."""
    return url.removeprefix("file://")
