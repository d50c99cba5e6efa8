"""Checking a parsed config file against its JSON schema, before anything reads it.

`proxy.config.load.load_config` calls `config_errors` on the TOML table of the
file and refuses the file (exit 2) if it returns anything. The schema ships
inside the package (`config.schema.json` beside this module; `schemas/` at
the repository root holds a copy). Each message starts with the field's path,
e.g. `models.prometheus-core.deployments[0].weight: -1 is less than the
minimum of 0`.

`config_errors_apart` is the same check worked out in a child process
(`python -m proxy.config.validate`, the file's text on stdin, the messages as
a JSON list on stdout): `serve` and `ship` use it, so that jsonschema and its
~2.5 MiB (rpds, referencing, the metaschemas) never enter a process that then
runs for days. If the child cannot run or answer, the check is done here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

SCHEMA_FILE = "config.schema.json"
CHILD_TIMEOUT_S = 60.0


@cache
def _validator() -> Draft202012Validator:
    # imported here: a run without a config file does not pay for it
    from jsonschema import Draft202012Validator

    schema = json.loads(resources.files("proxy.config").joinpath(SCHEMA_FILE).read_text())
    return Draft202012Validator(schema)


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _messages(error: ValidationError) -> list[str]:
    where = list(error.absolute_path)
    if (
        error.validator == "additionalProperties"
        and isinstance(error.instance, dict)
        and isinstance(error.schema, dict)
    ):
        known = error.schema.get("properties", {})
        return [
            f"{_path([*where, key])}: unknown field (known here: {', '.join(known) or 'none'})"
            for key in error.instance
            if key not in known
        ]
    if error.validator == "required" and isinstance(error.validator_value, list):
        return [
            f"{_path([*where, key])}: required field missing"
            for key in error.validator_value
            if isinstance(error.instance, dict) and key not in error.instance
        ]
    return [f"{_path(where) or '(top level)'}: {error.message}"]


def config_errors(raw: dict[str, Any]) -> list[str]:
    """What is wrong with the config table `raw`, one message per field, sorted by field."""
    errors = sorted(_validator().iter_errors(raw), key=lambda e: [str(p) for p in e.path])
    return [message for error in errors for message in _messages(error)]


def config_errors_apart(text: str) -> list[str]:
    """`config_errors` of the TOML `text` (already parsed once by the caller), worked
    out by a child process; in this process if the child gives no answer. The child
    imports this same copy of the package (not one in its working directory)."""
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    try:
        child = subprocess.run(
            [sys.executable, "-P", "-m", "proxy.config.validate"],
            input=text.encode(),
            env=env,
            capture_output=True,
            check=False,
            timeout=CHILD_TIMEOUT_S,
        )
        answer = json.loads(child.stdout) if child.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        answer = None
    if isinstance(answer, list) and all(isinstance(m, str) for m in answer):
        return answer
    return config_errors(tomllib.loads(text))


if __name__ == "__main__":
    sys.stdout.write(json.dumps(config_errors(tomllib.loads(sys.stdin.buffer.read().decode()))))
