"""Figures already measured, kept one JSON object per line so a long run can resume.

A full grid takes hours on two cores; an interrupted run should not have to start again.
Each entry is keyed by what was measured (a section, or a system at a grid point) and
stamped with when, by which command and at which commit it was measured, so the report
can say which figures came from an earlier invocation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Journal"]


class Journal:
    def __init__(self, path: Path | None, command: str, commit: str = "") -> None:
        self.path = path
        self.command = command
        self.commit = commit
        self.entries: dict[str, dict] = {}
        self.resumed: set[str] = set()
        self._torn = False
        if path is not None and path.exists():
            text = path.read_text()
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                # a line cut short by a kill mid-write is simply measured again
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.entries[entry["key"]] = entry

    def get(self, key: str) -> Any | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.resumed.add(key)
        return entry["value"]

    def put(self, key: str, value: Any) -> Any:
        """Record ``value`` and return it as it reads back from the file, so a fresh
        figure and a resumed one have the same types (JSON object keys are strings)."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        entry = {"key": key, "at": at, "by": self.command, "commit": self.commit, "value": value}
        line = json.dumps(entry)
        self.entries[key] = json.loads(line)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as out:
                # end a line torn by a kill mid-write, so the new entry stands on its own
                out.write(("\n" if self._torn else "") + line + "\n")
            self._torn = False
        return self.entries[key]["value"]

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        found = self.get(key)
        return found if found is not None else self.put(key, fn())

    def provenance(self, keys: set[str]) -> dict[str, list[str]]:
        """For the given entries: the command (and code) that measured them, as Markdown,
        and when (sorted)."""
        found: dict[str, list[str]] = {}
        for key in keys:
            entry = self.entries[key]
            label = f"`{entry['by']}`"
            if entry.get("commit"):
                label += f" at {entry['commit']}"
            found.setdefault(label, []).append(entry["at"])
        return {by: sorted(stamps) for by, stamps in found.items()}
