"""Settings, built once at start: `load` (file + environment), `model` (the typed
objects the rest of the gateway reads) and `catalogue` (the eight aliases and their
list prices)."""
