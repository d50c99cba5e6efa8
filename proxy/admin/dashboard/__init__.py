"""/dashboard: usage you can see. `session` (sign-in with a key, the cookie) and
`data` (the JSON the page reads, from the usage rollups)."""
