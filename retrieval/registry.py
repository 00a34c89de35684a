"""The one registration mechanism for every pluggable kind: attacks, miners, models, defenses and destinations.

A kind's base class names its registry and the class attribute that keys it; each subclass that sets that attribute
registers itself when it is defined, and carries every other fact about itself as class attributes. Adding one is
then a class file plus the import that defines it (the import order is the registry's order).
"""

from __future__ import annotations

from typing import Any, ClassVar

from retrieval.errors import UserError


class Registry(dict[str, type]):
    """The registered classes of one kind, by key, in the order they were defined."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__()
        self.kind = kind
        """What one is called in messages ("attack", "architecture")."""
        self.key = key
        """The class attribute that names a registered class and marks it as one."""

    def add(self, cls: type) -> None:
        name = cls.__dict__[self.key]
        if name in self:
            raise TypeError(f"{self.kind} {name!r} is defined twice: {self[name].__qualname__}, {cls.__qualname__}")
        self[name] = cls

    def lookup(self, name: str) -> type:
        """The class registered as `name`, or a UserError listing the choices."""
        if name not in self:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}")
        return self[name]


class Registered:
    """Base of a kind's base class: a subclass defining the registry's key attribute registers itself, unless it
    is defined with `register=False` (a test's or an experiment's variant, kept out of every listing)."""

    registry: ClassVar[Registry]

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if register and cls.registry.key in cls.__dict__:
            cls.registry.add(cls)
