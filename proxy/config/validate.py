"""Checking a parsed config file against its JSON schema, before anything reads it.

`proxy.config.load.load_config` calls `config_errors` on the TOML table of the
file and refuses the file (exit 2) if it returns anything. The schema ships
inside the package (`config.schema.json` beside this module; `schemas/` at
the repository root holds a copy). Each message starts with the field's path,
e.g. `models.prometheus-core.deployments[0].weight: -1 is less than the
minimum of 0`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

SCHEMA_FILE = "config.schema.json"


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
