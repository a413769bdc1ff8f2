"""Files: CSV, Excel workbooks, JSON lines or Parquet, at a path, a glob or any fsspec URL.

Every file the entity's ``path`` matches is read, in name order, into text chunks under
the source's own column names; the mapping step and the loader do the rest. (Web event
files partitioned by day are :mod:`lifecycle.extract.web`'s: they are assigned to
batches by arrival.)
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

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


def _is_dir(path: str) -> bool:
    """True when `path` is a folder (False when that cannot even be asked)."""
    try:
        fs, root = fsspec.core.url_to_fs(path)
        return bool(fs.isdir(root))
    except Exception:  # noqa: BLE001 - only chooses the wording of an error
        return False


def file_batch(entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile) -> Batch:
    """Return the batch of the files of `entity` (every row, placed by the loader's window)."""
    from lifecycle.load import LoadError

    path = sources.path_of(src, emap)
    assert path, "the sources file validation requires a path"
    key = f"sources.{entity.source}.entities.{entity.entity}.path"
    try:
        found = matching_files(path)
    except (ImportError, ValueError, OSError) as exc:
        # fsspec's words for an unknown scheme, a missing driver (s3fs, gcsfs) or an
        # unreachable host: said against the key that names the path.
        raise LoadError(f"{sources.origin}: {key}: cannot list {path}: {exc}") from exc
    if not found and sources.origin != "built-in" and not any(c in path for c in "*?["):
        # A glob may match nothing yet (files still to come); a file named in the user's
        # sources file that is not there is a mistake, not an empty source.
        raise LoadError(
            f"{sources.origin}: {key}: no file at {path}"
            + (" (a folder: name the file or a glob)" if _is_dir(path) else "")
        )
    if not found:
        return Batch(skip=f"no file matches {path}")
    return Batch(chunks=_chunks(entity, src, emap, sources, found))


def _chunks(
    entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile, found: list[str]
) -> Iterator[Chunk]:
    from lifecycle.extract import readers
    from lifecycle.load import LoadError

    for url in found:
        compression = _compression(src, emap, sources)
        before = _version(url)
        try:
            if compression == "infer" and src.kind != "excel":
                compression = sniffed_compression(url)
            if compression == "zip":
                fh = _zip_member(url)
            else:
                fh = fsspec.open(url, "rb", compression=compression).open()
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any filesystem's failure to open, one line
            raise LoadError(f"{_locator(url)}: cannot be opened: {exc}") from exc
        if not isinstance(fh, io.IOBase):
            # zstandard's reader has read/readinto but no readline (the CSV header's)
            fh = io.BufferedReader(fh)
        with fh:
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
        if _version(url) != before:
            # an export rewritten while it was read: the rows read are of neither version
            raise LoadError(
                f"{_locator(url)}: the file changed while it was read (its size or time "
                "moved): nothing was published; run again once it is written"
            )


def _version(url: str) -> tuple:
    """Return what says a file changed: its size and modification time (or ETag)."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except (OSError, ValueError):
        return ()
    when = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag")
    return (info.get("size"), str(when))


def _zip_member(url: str) -> BinaryIO:
    """Return the one file of a .zip archive, opened.

    fsspec's zip decompression reads the archive's first entry: of two files the second
    was dropped without a word, and a folder entry first read as an empty file. An
    archive must hold one file (folders aside); else one error line lists them.
    """
    import zipfile

    from lifecycle.load import LoadError

    raw = fsspec.open(url, "rb").open()
    try:
        archive = zipfile.ZipFile(raw)
    except zipfile.BadZipFile as exc:
        raw.close()
        raise LoadError(f"{_locator(url)}: cannot be opened as a zip archive: {exc}") from exc
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        archive.close()
        raw.close()
        listed = ", ".join(m.filename for m in members[:5]) + (", ..." if len(members) > 5 else "")
        what = "no file" if not members else f"{len(members)} files ({listed})"
        raise LoadError(
            f"{_locator(url)}: the zip archive holds {what}: it must hold one (unzip it and "
            "point the path at a glob of its files)"
        )
    return archive.open(members[0])


#: The first bytes of each compressed format fsspec reads (and of a zip archive).
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bz2"),
          (b"PK\x03\x04", "zip"))  # fmt: skip


def sniffed_compression(url: str) -> str | None:
    """Return the compression of `url` by its name, else by its first bytes.

    A compressed export saved without its extension (``orders.csv`` that is gzip, as
    some download links and `curl -o` leave it) read as text: every line malformed.
    """
    from fsspec.utils import infer_compression

    if url.lower().endswith(".zip"):
        return "zip"
    named = infer_compression(url)
    if named is not None:
        return named
    with fsspec.open(url, "rb") as raw:
        head = raw.read(4)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _compression(src: Source, emap: EntityMap, sources: SourcesFile) -> str | None:
    name = sources.format_of(src, emap).compression
    return None if name == "none" else name


def _locator(url: str) -> str:
    """Return how a file is named in raw's _source and the quarantine (local: its path)."""
    return url.removeprefix("file://")
