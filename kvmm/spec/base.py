"""The machinery every spec shares: a table of fields, read from JSON or from a
CLI `key=value,...` option through the same checks, with errors naming the field.

A spec class lists its `FIELDS`; `from_json(obj, where)` rejects unknown keys
and values of the wrong type or range, and `from_cli(text, where)` turns CLI
words into the same JSON object first (a field's `cli` name is how the option
spells it), so the CLI and the API share every check and every message.
"""
from __future__ import annotations


class SpecError(ValueError):
    """A configuration value that cannot be used. `field` names it the way the
    user wrote it (`drives[1].path_on_host`, `--drive ... path`); the message
    says what is wrong and what to do."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


_MISSING = object()


class Field:
    """One configurable value. `kind` is int, bool, str or a Spec class (a
    nested object, e.g. a rate limiter); `check(value) -> str | None` returns
    what is wrong with an otherwise well-typed value; `minimum`/`maximum`
    bound ints. `cli` is the CLI spelling (None: not settable there); a CLI
    flag-only word (`ro`) has `cli_flag=True`."""

    __slots__ = ("name", "kind", "default", "required", "check", "minimum", "maximum",
                 "cli", "cli_flag", "nullable", "choices", "item")

    def __init__(self, name: str, kind, default=None, required: bool = False, check=None,
                 minimum: int | None = None, maximum: int | None = None,
                 cli: str | None = None, cli_flag: bool = False, nullable: bool = True,
                 choices: tuple | None = None, item=None):
        self.name = name
        self.kind = kind
        self.default = default
        self.required = required
        self.check = check
        self.minimum = minimum
        self.maximum = maximum
        self.cli = cli
        self.cli_flag = cli_flag
        self.nullable = nullable
        self.choices = choices
        self.item = item                # for kind=list: the items' kind (int or str)


def _type_name(kind) -> str:
    if kind is bool:
        return "true or false"
    if kind is int:
        return "a whole number"
    if kind is float:
        return "a number"
    if kind is list:
        return "an array"
    if kind is str:
        return "a string"
    return "an object"


class Spec:
    """Base of the typed specs. Subclasses set FIELDS and may override
    `validate()` for checks across fields (raising SpecError)."""

    FIELDS: tuple[Field, ...] = ()
    # CLI shorthand prefixes for rate limiters given inline (`bw=`, `rx_iops=`):
    # prefix -> the RateLimiterSpec field they build.
    CLI_LIMITS: dict[str, str] = {}

    def __init__(self, **values):
        for f in self.FIELDS:
            value = values.pop(f.name, _MISSING)
            if value is _MISSING:
                value = f.default() if callable(f.default) and f.kind is not bool else f.default
            setattr(self, f.name, value)
        if values:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(values)}")

    # Reading. ---------------------------------------------------------------
    @classmethod
    def from_json(cls, obj, where: str = "", labels: dict[str, str] | None = None):
        """Build from a parsed JSON object; raise SpecError naming `where.field`
        (or `labels[field]`, e.g. the CLI flag the value came from)."""
        if not isinstance(obj, dict):
            raise SpecError(where, f"must be a JSON object, not {json_kind(obj)}")
        known = {f.name: f for f in cls.FIELDS}
        unknown = [k for k in obj if k not in known]
        if unknown:
            raise SpecError(where, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                   f"known: {', '.join(known)}")
        values = {}
        for f in cls.FIELDS:
            label = (labels or {}).get(f.name) or (f"{where}.{f.name}" if where else f.name)
            if f.name not in obj:
                if f.required:
                    raise SpecError(label, "is required")
                continue
            values[f.name] = _convert(f, obj[f.name], label)
        spec = cls(**values)
        spec.validate(where, labels or {})
        return spec

    @classmethod
    def from_cli(cls, text: str, where: str, extra: dict | None = None):
        """Build from a CLI option `key=value,...` (",," is a literal comma).
        Keys are the fields' `cli` names; `extra` adds JSON fields first."""
        by_cli = {f.cli: f for f in cls.FIELDS if f.cli}
        syntax = cls.cli_syntax()
        if not text.strip():
            raise SpecError(where, f"is empty; expected {syntax}")
        obj = dict(extra or {})
        seen = set()
        limits: dict[str, dict[str, str]] = {}
        limit_keys = cls._cli_limit_keys()
        for item in split_options(text):
            key, eq, value = item.partition("=")
            f = by_cli.get(key)
            if f is None and key in limit_keys:
                if key in seen:
                    raise SpecError(f"{where} {text!r}", f"{key} is given twice")
                seen.add(key)
                limits.setdefault(limit_keys[key], {})[key] = value
                continue
            if f is None:
                raise SpecError(f"{where} {text!r}", f"unknown option {key!r}; expected "
                                                     f"{syntax}")
            if key in seen:
                raise SpecError(f"{where} {text!r}", f"{key} is given twice")
            seen.add(key)
            label = f"{where} {text!r}: {key}"
            if f.cli_flag:
                if eq and value not in ("on", "off"):
                    raise SpecError(label, f"takes no value (or on/off), not {value!r}")
                obj[f.name] = value != "off"
            elif not eq:
                raise SpecError(label, f"needs a value ({key}=...); expected {syntax}")
            elif hasattr(f.kind, "from_cli_value"):
                obj[f.name] = f.kind.from_cli_value(value, label)
            elif f.kind is int:
                if not value.isdigit() or not value.isascii():
                    raise SpecError(label, f"{value!r} is not a whole number")
                obj[f.name] = int(value)
            else:
                obj[f.name] = value
        if limits:
            from kvmm.spec.ratelimit import RateLimiterSpec
            for prefix, field in cls.CLI_LIMITS.items():
                if prefix in limits:
                    obj[field] = RateLimiterSpec.from_shorthand(limits[prefix],
                                                                f"{where} {text!r}", prefix)
        values = {}
        for f in cls.FIELDS:
            label = f"{where} {text!r}: {f.cli or f.name}"
            if f.name not in obj:
                if f.required:
                    raise SpecError(f"{where} {text!r}", f"{f.cli or f.name}= is required; "
                                                         f"expected {syntax}")
                continue
            value = obj[f.name]
            values[f.name] = value if isinstance(value, Spec) else _convert(f, value, label)
        spec = cls(**values)
        spec.validate(f"{where} {text!r}", {})
        return spec

    @classmethod
    def _cli_limit_keys(cls) -> dict[str, str]:
        """Shorthand key -> its prefix, for the rate limiters given inline."""
        if not cls.CLI_LIMITS:
            return {}
        from kvmm.spec.ratelimit import SHORTHAND_KEYS
        return {p + k: p for p in cls.CLI_LIMITS for k in SHORTHAND_KEYS}

    CLI_SYNTAX = ""

    @classmethod
    def cli_syntax(cls) -> str:
        if cls.CLI_SYNTAX:
            return cls.CLI_SYNTAX
        parts = []
        for f in cls.FIELDS:
            if not f.cli:
                continue
            word = f.cli if f.cli_flag else f"{f.cli}=..."
            parts.append(word if f.required else f"[{word}]")
        for prefix in cls.CLI_LIMITS:
            parts.append(f"[{prefix}bw=B/s][{prefix}iops=N][{prefix}bw_burst=B]"
                         f"[{prefix}iops_burst=N]")
        return ",".join(parts)

    def validate(self, where: str = "", labels: dict[str, str] | None = None) -> None:
        """Checks across fields; raise SpecError (naming `labels[field]` where given)."""

    @staticmethod
    def field_label(where: str, name: str, labels: dict[str, str] | None = None) -> str:
        if labels and name in labels:
            return labels[name]
        return f"{where}.{name}" if where else name

    # Writing. ---------------------------------------------------------------
    def to_json(self) -> dict:
        out = {}
        for f in self.FIELDS:
            value = getattr(self, f.name)
            if isinstance(value, Spec):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def replace(self, **changes):
        values = {f.name: getattr(self, f.name) for f in self.FIELDS}
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f.name) == getattr(other, f.name) for f in self.FIELDS)

    __hash__ = None

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.FIELDS)
        return f"{type(self).__name__}({inner})"


def json_kind(value) -> str:
    """How an error message names a JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _convert(f: Field, value, label: str):
    if value is None:
        if f.nullable and not f.required:
            return None
        raise SpecError(label, f"must be {_type_name(f.kind)}, not null")
    kind = f.kind
    if isinstance(kind, type) and issubclass(kind, Spec):
        return kind.from_json(value, label)
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(label, f"must be a whole number, not {json_kind(value)}")
        if f.minimum is not None and value < f.minimum:
            raise SpecError(label, f"{value} is below the minimum {f.minimum}")
        if f.maximum is not None and value > f.maximum:
            raise SpecError(label, f"{value} is above the maximum {f.maximum}")
    elif kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SpecError(label, f"must be a number, not {json_kind(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise SpecError(label, f"must be a finite number, not {value}")
        value = float(value)
        if f.minimum is not None and value < f.minimum:
            raise SpecError(label, f"{value:g} is below the minimum {f.minimum:g}")
        if f.maximum is not None and value > f.maximum:
            raise SpecError(label, f"{value:g} is above the maximum {f.maximum:g}")
    elif kind is list:
        if not isinstance(value, list):
            raise SpecError(label, f"must be an array, not {json_kind(value)}")
        item = Field(f.name, f.item, nullable=False, minimum=f.minimum, maximum=f.maximum,
                     choices=f.choices)
        return tuple(_convert(item, v, f"{label}[{i}]") for i, v in enumerate(value))
    elif kind is bool:
        if not isinstance(value, bool):
            raise SpecError(label, f"must be true or false, not {json_kind(value)}")
    elif kind is str:
        if not isinstance(value, str):
            raise SpecError(label, f"must be a string, not {json_kind(value)}")
        if "\0" in value:
            raise SpecError(label, "contains a NUL character")
    if f.choices is not None and value not in f.choices:
        raise SpecError(label, f"{value!r} is not one of {', '.join(map(repr, f.choices))}")
    if f.check is not None:
        problem = f.check(value)
        if problem:
            raise SpecError(label, problem)
    return value


def split_options(text: str) -> list[str]:
    """Split a CLI option at commas; ",," is a literal comma (QEMU's escape)."""
    items, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text.startswith(",,", i):
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return items


ID_MAX = 64
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def check_id(text: str) -> str | None:
    """Device ids: 1-64 letters, digits, '_', '.' or '-', starting with a letter
    or digit (they appear in paths, metrics keys and limiter targets)."""
    if not (0 < len(text) <= ID_MAX and text[0].isascii() and text[0].isalnum()
            and all(c in _ID_CHARS for c in text)):
        return (f"{text!r} must be 1-{ID_MAX} letters, digits, '_', '.' or '-', starting "
                "with a letter or digit")
    return None


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_amount(text: str, label: str, default_unit: str = "") -> int:
    """'64M', '1G', '512K', '2MiB', '10MB', '1048576' -> a whole number (binary
    units); a bare number is in `default_unit`."""
    body = str(text).strip().upper()
    if body.endswith("IB") and len(body) > 2 and body[-3] in _SIZE_UNITS:
        body = body[:-2]
    elif body.endswith("B") and len(body) > 1:
        body = body[:-1]
    unit = default_unit
    if body and body[-1] in _SIZE_UNITS and body[-1]:
        unit, body = body[-1], body[:-1]
    if not body.isdigit() or not body.isascii():
        raise SpecError(label, f"{text!r} is not a size or amount; write e.g. 64M, 1G or "
                               "1048576")
    return int(body) * _SIZE_UNITS[unit]
