"""Usage at rest, after the meter made a record: `writer` (journal first, then
SQLite in batches), `journal` (the per-process segment files), `replay`
(segments of dead processes into SQLite), `rejected` (records SQLite refuses,
set aside so they block nothing) and `report` (rows per key, alias and day or
week)."""
