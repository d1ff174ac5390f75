"""A small generic registry of named classes, built from a job spec's strings (attacks, strategies).

Each catalogue keeps its classes in a plain ``dict`` (name to class, the
public ``ATTACKS`` / ``STRATEGIES``); a :class:`Registry` wraps that dict with
the checks shared by every catalogue: building an entry by name with its
keyword parameters, and registering a new class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from fedmarket.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one kind (subclasses of ``base``), by their ``name`` class attribute.

    Parameters
    ----------
    kind : str
        What the entries are, as error messages name them (``"attack"``, ``"strategy"``).
    base : type
        The class every entry derives from.
    classes : iterable of type
        The initial entries, in catalogue order.
    nested : str, optional
        A constructor parameter that takes another entry of the same registry;
        :meth:`make` builds it first when it is given as a name.

    Attributes
    ----------
    classes : dict of str to type
        The catalogue, name to class (the dict itself, so changes to it are seen).
    """

    def __init__(self, kind: str, base: type[T], classes: Iterable[type[T]], nested: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.nested = nested
        self.classes: dict[str, type[T]] = {cls.name: cls for cls in classes}

    def make(self, name: str, **params: Any) -> T:
        """Build the entry registered as ``name`` with its keyword parameters.

        Parameters
        ----------
        name : str
            A key of :attr:`classes`.
        **params
            Passed to the entry's constructor; the ``nested`` one may itself be a name.

        Returns
        -------
        object
            An instance of the registered class.

        Raises
        ------
        ConfigError
            On an unknown name or parameters the class does not take.
        """
        if name not in self.classes:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self.classes))}")
        if self.nested is not None and isinstance(params.get(self.nested), str):
            params[self.nested] = self.make(params[self.nested])
        try:
            return self.classes[name](**params)
        except TypeError as exc:
            raise ConfigError(f"bad parameters for {self.kind} '{name}': {exc}") from None

    def register(self, cls: type[T]) -> type[T]:
        """Add a subclass of ``base`` under its ``name`` (usable as a class decorator).

        Parameters
        ----------
        cls : type
            The class to add; registering the same class again is a no-op.

        Returns
        -------
        type
            ``cls``, unchanged.

        Raises
        ------
        ConfigError
            If ``cls`` is not a subclass of ``base``, has no name, or the name is taken.
        """
        if not (isinstance(cls, type) and issubclass(cls, self.base)) or not cls.name:
            raise ConfigError(f"can only register named {self.base.__name__} subclasses, got {cls!r}")
        if cls.name in self.classes and self.classes[cls.name] is not cls:
            raise ConfigError(f"a {self.kind} named '{cls.name}' is already registered")
        self.classes[cls.name] = cls
        return cls
