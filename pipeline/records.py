"""What flows between the pipeline's steps: records read from files, and dead letters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from vigil.schemas.tables import DEAD_LETTER_REASONS, STAGES


@dataclass
class RawRecord:
    """One record as read from a file, before decoding.

    ``value`` is encoded image bytes (image formats) or a sequence of feature values.
    """
    id: str | None
    source: str
    value: Any
    labels: dict = field(default_factory=dict)
    id_bytes: bytes | None = None      # kept only when the id was not valid UTF-8
    nbytes: int = 0                    # serialized size, for the record byte cap


class ScoringInput(NamedTuple):
    """A decoded, preprocessed record on its way to the model."""
    id: str
    x: Any                 # float32 numpy array shaped like the model input
    source: str
    labels: dict


@dataclass
class RecordBlock:
    """Decoded records as columns: what the pipeline scores and writes.

    A table's records are read straight into blocks (one per Arrow batch, checked in
    numpy); a file's images are read in lists and decoded into one block per list.  Beam
    batches blocks by their number of rows, so per-record Python work is paid only where
    the format needs it (decoding an image), never on the way to and from the model.
    """
    ids: list[str]
    x: np.ndarray                 # (rows, *input_shape), ready for the bundle's transform
    sources: list[str]            # each row's file
    labels: dict[str, list] = field(default_factory=dict)   # carried columns, one value per row

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, record: ScoringInput) -> RecordBlock:
        """A block of one decoded record."""
        return cls([record.id], np.asarray(record.x)[None], [record.source],
                   {k: [v] for k, v in record.labels.items()})

    @classmethod
    def concat(cls, blocks: Sequence[RecordBlock]) -> RecordBlock:
        """One block of several, rows in order; a label a block lacks is None on its rows."""
        if len(blocks) == 1:
            return blocks[0]
        names = dict.fromkeys(k for b in blocks for k in b.labels)
        return cls([i for b in blocks for i in b.ids], np.concatenate([b.x for b in blocks]),
                   [s for b in blocks for s in b.sources],
                   {k: [v for b in blocks for v in b.labels.get(k, [None] * len(b))] for k in names})


@dataclass(frozen=True)
class DeadLetter:
    """A record (or a whole file) that could not be scored, and why."""
    source: str
    stage: str
    reason: str
    message: str
    id: str | None = None
    id_hex: str | None = None

    def __post_init__(self):
        if self.reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"unknown dead-letter reason {self.reason!r}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown dead-letter stage {self.stage!r}")

    def to_row(self) -> dict:
        """The dead letter as a row of the dead-letter table."""
        return {"id": self.id, "id_hex": self.id_hex, "source": self.source,
                "stage": self.stage, "reason": self.reason, "message": self.message[:500]}


def record_dead_letter(record: RawRecord, stage: str, reason: str, message: str) -> DeadLetter:
    """A dead letter for one record, naming its file and id (hex of the id bytes when not UTF-8)."""
    return DeadLetter(record.source, stage, reason, message, record.id,
                      record.id_bytes.hex() if record.id_bytes is not None else None)


@dataclass
class FileStats:
    """How one input file was read: records yielded, and whether it was read to the end.

    A file that fails part-way adds a dead letter for every record it still held when
    that number is known (a Parquet footer, an image file), else one dead letter, and
    then its count is a lower bound (``count_known`` False).
    """
    uri: str
    records: int = 0
    fully_read: bool = True
    failure: str | None = None          # dead-letter reason when not fully read
    sha256: str | None = None           # of the file's bytes, as read
    held: int | None = None             # records the file holds, when known before reading
    failed_records: int = 0             # file-level dead letters (records lost to the failure)
    count_known: bool = True

    def to_dict(self) -> dict:
        """The per-file stats line the driver reads back to balance the books."""
        return {"uri": self.uri, "records": self.records, "fully_read": self.fully_read,
                "failure": self.failure, "sha256": self.sha256,
                "failed_records": self.failed_records, "count_known": self.count_known}
