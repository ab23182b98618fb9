"""A family defined outside the package: a tanh MLP, to show that adding one is one file.

``FAMILY`` is all :func:`bounds.families.register_family` needs; the tests register it,
use it through the public entry points and unregister it.
"""

from bounds.errors import FamilyError
from bounds.families import Family
from bounds.families._common import (
    LAYER,
    Builder,
    closed_form_function,
    constant,
    depth_value,
    product,
    symbol_name,
)
from bounds.validation import flag, integer


def mlp(depth: int = 2, *, shared: bool = False, symbol: str = "h"):
    """``depth`` linear layers with tanh between: Lip <= prod h_l (tanh is 1-Lipschitz)."""
    depth = integer("mlp", "depth", depth)
    shared, symbol = flag("mlp", "shared", shared), symbol_name("mlp", symbol)
    add = Builder(f"mlp{depth}")
    u = add("x", "input")
    for l in range(1, depth + 1):
        if l > 1:
            u = add(f"tanh{l - 1}", "tanh", u)
        u = add(f"fc{l}", "linear", u, lipschitz=constant("layer", l, shared=shared,
                                                           symbol=symbol))
    add("logits", "output", u)
    return add.G


@closed_form_function("mlp")
def closed_form(depth="n", *, shared=False, symbol="h"):
    """A chain: the product of the layer constants."""
    if isinstance(depth, tuple | list):
        raise FamilyError(f"closed_form('mlp'): expected one depth, got {depth!r}.")
    n = depth_value("closed_form('mlp')", depth)
    return product(lambda l: constant("layer", l, shared=shared, symbol=symbol), LAYER, 1, n,
                   shared=shared)


FAMILY = Family("mlp", mlp, closed_form, presets={"mlp3": {"depth": 3}},
                patterns=(r"(tiny_)?mlp\d*",), aliases=("perceptron",))

