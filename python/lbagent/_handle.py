"""What the owners of a C handle (Agent, Prober) share: `with` support and idempotent closing."""

from __future__ import annotations

from typing import Any, Optional, TypeVar

_Owner = TypeVar("_Owner", bound="HandleOwner")


class HandleOwner:
    """Owns one C handle in `_handle` (None once closed); subclasses define `close()`."""

    _handle: Optional[Any] = None

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self: _Owner) -> _Owner:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the module may be half torn down
            pass
