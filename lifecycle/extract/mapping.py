"""The mapping step: source records, under their own names, to contract fields as text.

It sits between a connector and the loader's checker (:class:`lifecycle.parse.Checker`):
it renames source columns to contract fields, fills constants, and will recode values,
parse dates in declared formats and time zones, and build orders from order lines, as
the sources file (:mod:`lifecycle.sources_file`) says. Its output is a :class:`Chunk` of
string columns with contract names, exactly what the checker takes, so quarantine,
batches, windows and watermarks work unchanged. An entity without a mapping (the
built-in layout) passes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from lifecycle.parse import Chunk
from lifecycle.raw import RawEntity
from lifecycle.sources_file import EntityMap, Source, SourcesFile


class Mapper:
    """Maps the chunks of one entity's batch onto its contract."""

    def __init__(
        self, entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile
    ) -> None:
        self.entity = entity
        self.src = src
        self.emap = emap
        self.sources = sources

    @property
    def is_identity(self) -> bool:
        """True when source columns already carry contract names and nothing is recoded."""
        return not self.emap.columns and self.emap.refunds is None and self.emap.grain == "order"

    def map_chunks(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Yield `chunks` mapped onto the contract."""
        if self.is_identity:
            yield from chunks
            return
        for chunk in chunks:
            yield self.map(chunk)

    def map(self, chunk: Chunk) -> Chunk:
        """Return one chunk mapped onto the contract."""
        raise NotImplementedError("column mappings arrive with the mapping step")
