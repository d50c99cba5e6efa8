"""Who is calling: `bearer` (the request's key checked against the in-memory
mirror), `key_table` (that mirror, per process) and `keys` (minting, hashing
and the SQLite table, shared by the CLI and the admin API)."""
