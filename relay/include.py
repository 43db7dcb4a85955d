"""Which tables a source publishes: include/exclude ``db.table`` globs."""

from __future__ import annotations

from fnmatch import fnmatchcase

from app.settings import SYSTEM_SCHEMAS, SourceSettings


class TableFilter:
    """Answers "is db.table published?", cached, since it is asked for every rows event."""

    def __init__(self, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
        self._include = include
        self._exclude = exclude
        self._cache: dict[tuple[str, str], bool] = {}

    @classmethod
    def of(cls, source: SourceSettings) -> TableFilter:
        return cls(source.include, source.exclude)

    def __call__(self, db: str, table: str) -> bool:
        key = (db, table)
        answer = self._cache.get(key)
        if answer is None:
            answer = self._cache[key] = self._decide(db, table)
        return answer

    def _decide(self, db: str, table: str) -> bool:
        name = f"{db}.{table}"
        if self._include:
            included = any(fnmatchcase(name, pattern) for pattern in self._include)
        else:
            included = db not in SYSTEM_SCHEMAS
        return included and not any(fnmatchcase(name, pattern) for pattern in self._exclude)
