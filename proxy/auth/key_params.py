"""The rules for a new key's settings, shared by `keys create` (`proxy.cli`) and
`POST /admin/keys` (`proxy.admin.api`), so both refuse the same values with the same
words, before anything is written; `proxy.auth.keys.create_key` checks them again.

- `name`: a non-empty, printable string of at most `MAX_NAME_CHARS` characters.
- `rpm`, `tpm`: whole numbers from 0 to `MAX_LIMIT` (what a SQLite INTEGER, and
  any later counter, holds with room to spare), or absent.
- `budget_usd`: a finite number >= 0 (NaN and infinities refused), or absent.
- `budget_period`: `total` (the default), `monthly` or `daily` (UTC calendar
  periods): the spend that `budget_usd` caps.
- `expires_at`: absent, or when the key stops working: seconds since the epoch,
  or an ISO 8601 time (UTC unless it names a zone).
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
from datetime import UTC, datetime

MAX_LIMIT = 2**31 - 1
MAX_NAME_CHARS = 200
MAX_ALIAS_CHARS = 200
MAX_ALIASES = 256

LIMIT_RULE = f"must be a whole number from 0 to {MAX_LIMIT}"
BUDGET_RULE = "must be a finite number >= 0"
NAME_RULE = f"must be a non-empty, printable string of at most {MAX_NAME_CHARS} characters"
PERIODS = ("total", "monthly", "daily")
PERIOD_RULE = "must be 'total', 'monthly' or 'daily'"
EXPIRES_RULE = "must be a time: seconds since the epoch (a number > 0) or an ISO 8601 string"
GRACE_RULE = "must be a number of seconds from 0 to 31536000 (a year)"
MAX_GRACE_S = 365 * 86400
UPDATABLE = ("name", "rpm", "tpm", "budget_usd", "budget_period", "models", "expires_at")
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
    budget_period: str = "total"
    expires_at: float | None = None


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


def check_period(value: object) -> str:
    if value is None:
        return "total"
    if not isinstance(value, str) or value not in PERIODS:
        raise KeyParamError("budget_period", PERIOD_RULE)
    return value


def check_expires(value: object) -> float | None:
    """Seconds since the epoch, from a number or an ISO 8601 string; None for never."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise KeyParamError("expires_at", EXPIRES_RULE) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KeyParamError("expires_at", EXPIRES_RULE)
    try:
        stamp = float(value)
    except OverflowError:
        raise KeyParamError("expires_at", EXPIRES_RULE) from None
    if not math.isfinite(stamp) or not 0 < stamp < 1e11:
        raise KeyParamError("expires_at", EXPIRES_RULE)
    return stamp


def check_grace(value: object) -> float:
    """A rotation's grace period in seconds (0: the old secret stops at once)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KeyParamError("grace_s", GRACE_RULE)
    grace = float(value)
    if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE_S:
        raise KeyParamError("grace_s", GRACE_RULE)
    return grace


def check_settings(body: Mapping[str, object]) -> KeySettings:
    """The settings of `POST /admin/keys`, each checked; the first refusal raises."""
    return KeySettings(
        name=check_name(body.get("name")),
        rpm=check_limit("rpm", body.get("rpm")),
        tpm=check_limit("tpm", body.get("tpm")),
        budget_usd=check_budget(body.get("budget_usd")),
        models=check_models(body.get("models")),
        budget_period=check_period(body.get("budget_period")),
        expires_at=check_expires(body.get("expires_at")),
    )


def check_update(body: Mapping[str, object]) -> dict[str, object]:
    """The changes of `PATCH /admin/keys/{id}` or `keys update`: only the fields
    given, each checked; `null` clears a limit (a name cannot be cleared). Column
    values, ready to store (`models` comma-joined)."""
    changes: dict[str, object] = {}
    for field in body:
        if field not in UPDATABLE:
            raise KeyParamError(field, "is not a setting of a key that can be changed")
    if "name" in body:
        changes["name"] = check_name(body["name"])
    for field in ("rpm", "tpm"):
        if field in body:
            changes[field] = check_limit(field, body[field])
    if "budget_usd" in body:
        changes["budget_usd"] = check_budget(body["budget_usd"])
    if "budget_period" in body:
        changes["budget_period"] = check_period(body["budget_period"])
    if "expires_at" in body:
        changes["expires_at"] = check_expires(body["expires_at"])
    if "models" in body:
        models = check_models(body["models"])
        changes["models"] = ",".join(models) if models is not None else None
    return changes


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


def expires_from_text(text: str) -> float | None:
    """`--expires-at`: epoch seconds or ISO 8601; `never` clears it."""
    if text.strip().lower() in ("never", "none"):
        return None
    try:
        return check_expires(float(text))
    except ValueError:
        return check_expires(text)


def _printable(text: str, max_chars: int) -> bool:
    return 0 < len(text) <= max_chars and text.isprintable()
