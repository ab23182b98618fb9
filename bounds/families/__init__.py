r"""Architecture families: builders of graphs with symbolic constants, closed forms, presets.

One module per family (:mod:`bounds.families.vgg`, ``resnet``, ``densenet``,
``transformer``), each defining its builder, its closed form with symbolic depth, its
presets and the model-name patterns it answers to, gathered in a :class:`Family`; the
registry (:mod:`bounds.families.registry`) is filled below, one line per family. A new
family is one new module and one :func:`register_family` call (or a call from user code).

``bounds.families.vgg`` etc. are the builder functions (the modules are
``bounds.families.vgg`` in ``sys.modules``; :func:`get_family` returns the rest).

======================  ==============================================================
name                    what
======================  ==============================================================
``Family``              the dataclass ``Family(name, build, closed_form, presets,
                        patterns, aliases)``
``register_family``     ``register_family(family, *, overwrite=False)``
``get_family``          ``get_family(name_or_alias) -> Family`` (``FamilyError``
                        listing the known names)
``family_of``           ``family_of(model_name) -> Family | None`` by name pattern
``FAMILIES``            tuple of the registered names (read when accessed)
``PRESETS``             preset name -> ``(family, builder options)`` (likewise)
``preset``              ``preset(name, **options)``: the graph of a preset
======================  ==============================================================

Examples
--------
>>> from bounds import families
>>> families.FAMILIES
('vgg', 'resnet', 'densenet', 'transformer')
>>> families.family_of("torchvision:densenet121").name
'densenet'
"""

from __future__ import annotations

import networkx as nx

from bounds.errors import FamilyError
from bounds.families import densenet as _densenet_module
from bounds.families import resnet as _resnet_module
from bounds.families import transformer as _transformer_module
from bounds.families import vgg as _vgg_module
from bounds.families.registry import (
    Family,
    all_presets,
    family_of,
    get_family,
    register_family,
    registered,
    unregister_family,
)

register_family(_vgg_module.FAMILY)
register_family(_resnet_module.FAMILY)
register_family(_densenet_module.FAMILY)
register_family(_transformer_module.FAMILY)

# the builder functions under the names of the public contract (``bounds.families.vgg``)
vgg = _vgg_module.vgg
resnet = _resnet_module.resnet
densenet = _densenet_module.densenet
transformer = _transformer_module.transformer

__all__ = ["Family", "register_family", "unregister_family", "get_family", "family_of",
           "FAMILIES", "PRESETS", "preset", "vgg", "resnet", "densenet", "transformer"]


def __getattr__(name: str):
    if name == "FAMILIES":
        return registered()
    if name == "PRESETS":
        return all_presets()
    raise AttributeError(f"module 'bounds.families' has no attribute {name!r}")


def preset(name: str, **options) -> nx.DiGraph:
    """The graph of a named architecture from :data:`PRESETS` (options override it).

    Parameters
    ----------
    name : str
        A preset of a registered family: ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``,
        ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``,
        ``densenet121``, ``densenet161``, ``densenet169``, ``densenet201``,
        ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``.
    **options
        Builder options replacing the preset's (e.g. ``shared=True``, or
        ``input_size=224`` for the VGG presets, whose adaptive pooling otherwise takes its
        worst case over every input size).

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FamilyError
        If the name is unknown or an option is invalid.

    Examples
    --------
    >>> from bounds import derive, preset
    >>> derive(preset("resnet18", shared=True)).lipschitz
    2*h**5*(h + 1)**3*(h**2 + 1)**5
    >>> derive(preset("vgg16", shared=True)).lipschitz, derive(preset(
    ...     "vgg16", shared=True, input_size=224)).lipschitz
    (7*h**16, h**16)
    """
    presets = all_presets()
    if name not in presets:
        raise FamilyError(f"preset: unknown architecture {name!r}; known: "
                          f"{', '.join(presets)}.")
    family, defaults = presets[name]
    G = get_family(family).build(**{**defaults, **options})
    G.graph["name"] = name
    return G
