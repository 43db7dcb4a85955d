"""Stream processors: the consumers that apply change events."""

__all__: list[str] = []
