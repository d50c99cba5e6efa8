"""The rules for a new key's settings, shared by `keys create` (`proxy.cli`) and
`POST /admin/keys` (`proxy.admin.api`), so both refuse the same values with the same
words, before anything is written; `proxy.auth.keys.create_key` checks them again.

- `name`: a non-empty, printable string of at most `MAX_NAME_CHARS` characters.
- `rpm`, `tpm`: whole numbers from 0 to `MAX_LIMIT` (what a SQLite INTEGER, and
  any later counter, holds with room to spare), or absent.
- `budget_usd`: a finite number >= 0 (NaN and infinities refused), or absent.
- `models`: absent (the key may use every alias), or a non-empty list of aliases.
  An empty list would mint a key that can use nothing, so it is refused rather
  than stored as "no restriction". Aliases are stored comma-joined, so an alias
  with a comma (which would read back as two) is refused, as are empty ones.
  The CLI's `--models a,b` (and a JSON string `"a,b"`) is the comma-joined form.

Messages never repeat the value they refuse: a key pasted into the wrong field
must not come back in an answer or a log line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

MAX_LIMIT = 2**31 - 1
MAX_NAME_CHARS = 200
MAX_ALIAS_CHARS = 200
MAX_ALIASES = 256

LIMIT_RULE = f"must be a whole number from 0 to {MAX_LIMIT}"
BUDGET_RULE = "must be a finite number >= 0"
NAME_RULE = f"must be a non-empty, printable string of at most {MAX_NAME_CHARS} characters"
MODELS_RULE = (
    f"must list 1 to {MAX_ALIASES} aliases (leave it out for a key that may use every alias);"
    f" each alias is a non-empty, printable string of at most {MAX_ALIAS_CHARS} characters,"
    " with no comma and no surrounding spaces"
)


class KeyParamError(ValueError):
    """One refused setting: `param` names it, `rule` says what it must be."""

    def __init__(self, param: str, rule: str, *, missing: bool = False) -> None:
        super().__init__(f"'{param}' {rule}.")
        self.param = param
        self.rule = rule
        self.missing = missing

    @property
    def message(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class KeySettings:
    name: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    models: list[str] | None = None


def check_name(value: object) -> str:
    if value is None:
        raise KeyParamError("name", NAME_RULE, missing=True)
    if not isinstance(value, str) or not _printable(value, MAX_NAME_CHARS) or not value.strip():
        raise KeyParamError("name", NAME_RULE)
    return value


def check_limit(param: str, value: object) -> int | None:
    """`rpm` or `tpm`: an int (not a bool, not 1.0) from 0 to `MAX_LIMIT`, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise KeyParamError(param, LIMIT_RULE)
    return value


def check_budget(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KeyParamError("budget_usd", BUDGET_RULE)
    try:
        budget = float(value)
    except OverflowError:  # an int past a double's range
        raise KeyParamError("budget_usd", BUDGET_RULE) from None
    if not math.isfinite(budget) or budget < 0:
        raise KeyParamError("budget_usd", BUDGET_RULE)
    return budget


def check_models(value: object) -> list[str] | None:
    """A list of aliases, or the comma-joined text of one; None for every alias."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ALIASES:
        raise KeyParamError("models", MODELS_RULE)
    aliases: dict[str, None] = {}  # ordered, without repeats
    for alias in value:
        if (
            not isinstance(alias, str)
            or not _printable(alias, MAX_ALIAS_CHARS)
            or "," in alias
            or alias.strip() != alias
        ):
            raise KeyParamError("models", MODELS_RULE)
        aliases[alias] = None
    return list(aliases)


def check_settings(body: Mapping[str, object]) -> KeySettings:
    """The settings of `POST /admin/keys`, each checked; the first refusal raises."""
    return KeySettings(
        name=check_name(body.get("name")),
        rpm=check_limit("rpm", body.get("rpm")),
        tpm=check_limit("tpm", body.get("tpm")),
        budget_usd=check_budget(body.get("budget_usd")),
        models=check_models(body.get("models")),
    )


# -- the CLI's text forms (argparse `type=` functions call these) -----------------


def limit_from_text(param: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # not a whole number, or too many digits for int()
        raise KeyParamError(param, LIMIT_RULE) from None
    checked = check_limit(param, value)
    assert checked is not None
    return checked


def budget_from_text(text: str) -> float:
    try:
        value = float(text)  # "nan", "inf" and "1e400" parse: check_budget refuses them
    except ValueError:
        raise KeyParamError("budget_usd", BUDGET_RULE) from None
    checked = check_budget(value)
    assert checked is not None
    return checked


def _printable(text: str, max_chars: int) -> bool:
    return 0 < len(text) <= max_chars and text.isprintable()
