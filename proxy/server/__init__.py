"""The process: `lifecycle` (start, replay, run, stop), `supervisor` (N forked
workers), `app` (the aiohttp application wired from the rooms), `state` (what a
process holds while it serves) and `tuning` (GC and heap trimming)."""
