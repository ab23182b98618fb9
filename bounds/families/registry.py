"""The registry of architecture families: one :class:`Family` per module, in one place.

A family bundles its graph builder, its closed form with symbolic depth, its named
presets and the model names it answers to. :func:`bounds.closed_form`, :func:`bounds.rank`,
:func:`bounds.preset` and :data:`bounds.PRESETS` read this registry, so a new family is one
new module defining a :class:`Family` and one :func:`register_family` call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bounds.errors import FamilyError

__all__ = ["Family", "register_family", "unregister_family", "get_family", "family_of",
           "registered", "all_presets"]


@dataclass(frozen=True)
class Family:
    """An architecture family: how to build it, its closed form, presets and names.

    Parameters
    ----------
    name : str
        The family's name (an identifier), e.g. ``"resnet"``.
    build : callable
        ``build(depth, **options) -> networkx.DiGraph`` with symbolic constants.
    closed_form : callable
        ``closed_form(depth="n", *, shared=False, symbol="h", **options) -> sympy.Expr``,
        equal to ``derive(build(k, **options)).lipschitz`` for every integer depth ``k``;
        it validates its options and raises :class:`FamilyError`.
    presets : mapping, optional
        Preset name -> builder options including ``depth`` (e.g. ``{"resnet18":
        {"depth": (2, 2, 2, 2), ...}}``); ``closed_form(**presets[name], shared=True)`` is
        the preset's closed form.
    patterns : tuple of str, optional
        Regular expressions matched, in full and ignoring case, against a model's name
        (:func:`family_of`).
    aliases : tuple of str, optional
        Other names :func:`get_family` accepts (``"vit"`` for ``"transformer"``).

    Raises
    ------
    FamilyError
        If a field has the wrong type, a pattern does not compile or a preset lacks a
        ``depth``.
    """

    name: str
    build: Callable
    closed_form: Callable
    presets: Mapping = field(default_factory=dict)
    patterns: tuple = ()
    aliases: tuple = ()

    def __post_init__(self) -> None:
        where = f"Family({self.name!r})"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise FamilyError(f"Family: expected name to be an identifier, got {self.name!r}.")
        if not callable(self.build) or not callable(self.closed_form):
            raise FamilyError(f"{where}: expected build and closed_form to be callables, got "
                              f"{self.build!r} and {self.closed_form!r}.")
        if not isinstance(self.presets, Mapping) or not all(
                isinstance(options, Mapping) and "depth" in options
                for options in self.presets.values()):
            raise FamilyError(f"{where}: expected presets to map names to builder options "
                              f"with a depth, got {self.presets!r}.")
        for attribute in ("patterns", "aliases"):
            value = getattr(self, attribute)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise FamilyError(f"{where}: expected {attribute} to be a tuple of strings, "
                                  f"got {value!r}.")
            object.__setattr__(self, attribute, tuple(value))
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise FamilyError(f"{where}: pattern {pattern!r} does not compile: {err}.") \
                    from err
        object.__setattr__(self, "presets", MappingProxyType(
            {key: MappingProxyType(dict(options)) for key, options in self.presets.items()}))

    def matches(self, model_name: str) -> bool:
        """Whether one of :attr:`patterns` matches ``model_name`` in full, ignoring case."""
        return any(re.fullmatch(pattern, model_name, re.IGNORECASE)
                   for pattern in self.patterns)


#: name -> Family, in registration order
_REGISTRY: dict[str, Family] = {}


def _names_of(family: Family) -> set[str]:
    return {family.name, *family.aliases, *family.presets}


def register_family(family: Family, *, overwrite: bool = False) -> Family:
    """Add a family to the registry (and its presets to :data:`bounds.PRESETS`).

    Parameters
    ----------
    family : Family
    overwrite : bool, default False
        Replace a registered family of the same name; without it that is refused, so a
        family is never replaced silently.

    Returns
    -------
    Family
        ``family``, so that a module may write ``FAMILY = register_family(Family(...))``.

    Raises
    ------
    FamilyError
        If ``family`` is not a :class:`Family`, its name is taken and ``overwrite`` is
        False, or one of its names, aliases or presets belongs to another family.

    Examples
    --------
    >>> from bounds.families import get_family, register_family
    >>> register_family(get_family("vgg"))
    Traceback (most recent call last):
    ...
    bounds.errors.FamilyError: register_family: a family named 'vgg' is registered; pass overwrite=True to replace it.
    """
    if not isinstance(family, Family):
        raise FamilyError(f"register_family: expected a Family, got {type(family).__name__}.")
    if family.name in _REGISTRY and not overwrite:
        raise FamilyError(f"register_family: a family named {family.name!r} is registered; "
                          f"pass overwrite=True to replace it.")
    for other in _REGISTRY.values():
        clash = _names_of(family) & _names_of(other)
        if other.name != family.name and clash:
            raise FamilyError(f"register_family: {sorted(clash)[0]!r} of family "
                              f"{family.name!r} already names family {other.name!r}.")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Remove a family from the registry and return it (raises :class:`FamilyError`)."""
    family = get_family(name)
    del _REGISTRY[family.name]
    return family


def registered() -> tuple[str, ...]:
    """The names of the registered families, in registration order."""
    return tuple(_REGISTRY)


def get_family(name_or_alias: str) -> Family:
    """The registered family of that name or alias.

    Raises
    ------
    FamilyError
        If there is none; the message lists the known names.

    Examples
    --------
    >>> from bounds.families import get_family
    >>> get_family("vit").name
    'transformer'
    """
    for family in _REGISTRY.values():
        if name_or_alias == family.name or name_or_alias in family.aliases:
            return family
    known = ", ".join(f"{family.name}" + (f" ({', '.join(family.aliases)})"
                                          if family.aliases else "")
                      for family in _REGISTRY.values())
    raise FamilyError(f"get_family: unknown family {name_or_alias!r}; known: {known}.")


def family_of(model_name: str) -> Family | None:
    """The family whose name patterns match a model name, or None.

    The name is read after its last ``:`` (``torchvision:resnet18`` -> ``resnet18``, a
    factory name for ``FILE.py:FACTORY``); the first registered family with a matching
    pattern wins.

    Examples
    --------
    >>> from bounds.families import family_of
    >>> family_of("torchvision:resnet18").name, family_of("vit_b_16").name
    ('resnet', 'transformer')
    >>> family_of("fimbound:vgg").name, family_of("vgg16_bn").name
    ('vgg', 'vgg')
    >>> family_of("net.py:build") is None
    True
    """
    if not isinstance(model_name, str):
        raise FamilyError(f"family_of: expected a model name, got {model_name!r}.")
    name = model_name.rsplit(":", 1)[-1].strip()
    return next((family for family in _REGISTRY.values() if family.matches(name)), None)


def all_presets() -> Mapping[str, tuple[str, Mapping]]:
    """Preset name -> ``(family name, builder options)`` over every registered family."""
    return MappingProxyType({name: (family.name, options)
                             for family in _REGISTRY.values()
                             for name, options in family.presets.items()})
