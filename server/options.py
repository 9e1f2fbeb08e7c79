"""psi-server's option defaults and checks, and the other places options come from.

Precedence, highest first:

1. the command line;
2. environment variables ``PSI_SERVER_<OPTION>`` (``PSI_SERVER_MAX_LIST_SIZE`` for
   ``--max-list-size``), for every command that has the option;
3. the configuration file (``--config FILE`` or ``PSI_SERVER_CONFIG``), TOML: top-level
   keys for every command that has the option, a table per command for that command
   only (``[serve]``, ``[consent.import]``), the more specific winning;
4. the defaults: the session policy's and the server's own for ``serve``
   (``psi.protocol.Policy``, ``ServerConfig``), the table below for the rest.

Only deployment settings can be configured (``CONFIGURABLE``): the users, files and
times a command acts on, ``--reset`` and ``--unsafe-exact-counts`` are taken from the
command line only. Every value goes through the same checks as on the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields

from psi.noise import epsilon_fraction
from psi.protocol import Policy

from .registry.rows import DEFAULT_REGION
from .registry.times import FUTURE_SKEW, latest_accepted, parse_time
from .config import ServerConfig

__all__ = [
    "DEFAULTS",
    "ENV_PREFIX",
    "ConfigError",
    "HelpFormatter",
    "LOG_LEVELS",
    "config_path",
    "configure",
    "count",
    "epsilon",
    "number",
    "time_argument",
]

ENV_PREFIX = "PSI_SERVER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")

_POLICY = Policy()
_SERVER = {f.name: f.default for f in fields(ServerConfig)}

DEFAULTS: dict[str, object] = {
    # serve: read from where the server and the session policy define them
    "listen": _SERVER["listen"],
    "identifiers_per_user": _SERVER["identifiers_per_user"],
    "max_sessions": _SERVER["max_sessions"],
    "max_sessions_per_advertiser": _SERVER["max_sessions_per_advertiser"],
    "session_timeout": _SERVER["session_timeout"],
    "grace": _SERVER["grace"],
    "min_list_size": _POLICY.min_list_size,
    "max_list_size": _POLICY.max_list_size,
    "threshold": _POLICY.threshold,
    "epsilon_min": _POLICY.epsilon_min,
    "epsilon_max": _POLICY.epsilon_max,
    # the other commands
    "region": DEFAULT_REGION,
    "epsilon_budget": 1.0,
    "period_days": 30.0,
    "limit": 100,
    "overlap_hours": 0.0,
    "log_level": "info",
}


# The settings of a deployment, which the environment or a file may give. Not the
# subjects of a command (users, files, times) nor anything that changes state
# (--reset), and never --unsafe-exact-counts.
CONFIGURABLE = frozenset(DEFAULTS) | {
    "db",
    "tls_cert",
    "tls_key",
    "client_ca",
    "insecure",
    "workers",
    "executor",
}


class ConfigError(Exception):
    """A configuration file or environment variable that cannot be used."""


def count(minimum: int) -> Callable[[str], int]:
    """A whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def number(minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    """A finite number of at least (or above) ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError("must be a finite number")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be {'at least' if inclusive else 'above'} {minimum:g}"
            )
        return value

    return parse


def epsilon(text: str) -> float:
    """A privacy parameter: finite, and at least the resolution budgets are kept in."""
    value = number(0, inclusive=False)(text)
    try:
        epsilon_fraction(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def time_argument(text: str) -> str:
    """An ISO 8601 time with a timezone, not in the future."""
    try:
        when = parse_time(text, "the time")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if when > latest_accepted():
        minutes = int(FUTURE_SKEW.total_seconds() // 60)
        raise argparse.ArgumentTypeError(f"is more than {minutes} minutes in the future")
    return when


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, as configured, in ``--help``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser with its command path, the top-level one included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


def _configurable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options that may come from the environment or the configuration file."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest in CONFIGURABLE}


def _flag(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction)


def _convert(action: argparse.Action, value: object, origin: str) -> object:
    name = action.option_strings[-1]
    if _flag(action):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{origin}: {name} takes true or false")
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{origin}: {name} takes a single value")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        converted = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: {name} {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{origin}: {name} must be one of {', '.join(map(str, action.choices))}")
    return converted


def _layers(config: Mapping, path: tuple[str, ...]) -> list[tuple[str, dict]]:
    """The tables of ``config`` that apply to the command at ``path``, least specific
    first, with the name each is known by in messages."""
    layers = [
        ("the configuration file", {k: v for k, v in config.items() if not isinstance(v, dict)})
    ]
    table = config
    for depth, name in enumerate(path, start=1):
        table = table.get(name, {}) if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            raise ConfigError(f"the configuration file: {'.'.join(path[:depth])} must be a table")
        layers.append(
            (
                f"[{'.'.join(path[:depth])}]",
                {k: v for k, v in table.items() if not isinstance(v, dict)},
            )
        )
    return layers


def _check_names(config: Mapping, path: tuple[str, ...], commands: dict) -> None:
    """Every key names a command beneath its table, or an option of one."""
    beneath = [(p, c) for p, c in commands.items() if p[: len(path)] == path]
    where = f"[{'.'.join(path)}]" if path else "the configuration file"
    for key, value in config.items():
        if isinstance(value, dict):
            if not any(p[: len(path) + 1] == path + (key,) for p, _ in beneath):
                raise ConfigError(f"{where}: no command {' '.join(path + (key,))}")
            _check_names(value, path + (key,), commands)
        elif key.replace("-", "_") not in {d for _, c in beneath for d in _configurable(c)}:
            raise ConfigError(f"{where}: {key} is not an option that can be configured here")


def load(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the configuration file {path} is not valid TOML: {exc}") from None


def configure(
    parser: argparse.ArgumentParser,
    config_path: str | None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Make the configuration file's and the environment's values the parser's defaults."""
    commands = dict(_commands(parser))
    config = load(config_path) if config_path else {}
    _check_names(config, (), commands)
    known = {d for c in commands.values() for d in _configurable(c)}
    env = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            dest = key[len(ENV_PREFIX) :].lower()
            if dest not in known:
                raise ConfigError(f"{key} is not an option that can be configured")
            env[dest] = (key, value)
    for path, command in commands.items():
        options = _configurable(command)
        for origin, table in _layers(config, path):
            for key, value in table.items():
                action = options.get(key.replace("-", "_"))
                if action is not None:
                    _set(action, _convert(action, value, origin))
        for dest, (key, value) in env.items():
            if dest in options:
                _set(options[dest], _convert(options[dest], value, key))


def _set(action: argparse.Action, value: object) -> None:
    action.default = value
    action.required = False


def config_path(argv: list[str], environ: Mapping[str, str] = os.environ) -> str | None:
    """``--config`` from the command line, else ``PSI_SERVER_CONFIG``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    return known.config or environ.get(CONFIG_ENV) or None
