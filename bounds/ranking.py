r"""Rankings of the families' bounds, and the exact conditions under which they flip.

With the same per-layer constants in every family (every convolution and linear layer
``h``, every LayerNorm ``ell``, every attention head ``a``) the bounds of
:func:`bounds.closed_form` become functions of a few shared symbols and the depths. For
two of them, :math:`L_A < L_B` is equivalent to

.. math:: \log L_A < \log L_B,

and since every factor of a bound is positive the logarithms expand into sums
:math:`\sum_i c_i \log b_i` (:func:`sympy.expand_log` with ``force=True`` is exact here).
That inequality, with common positive factors (such as a shared depth :math:`n`) divided
out, is the exact condition :func:`rank` reports. When a single symbol :math:`x` is left
and the :math:`c_i` are rational, :math:`\exp(k \cdot \text{difference})` is a ratio of
polynomials, so the condition is a polynomial inequality on :math:`x > 0` that SymPy
solves exactly (roots as :class:`~sympy.CRootOf`); otherwise the logarithmic form is left
as it is. Some facts this makes checkable, for the same depth :math:`n` and shared
:math:`h`: VGG :math:`h^n` < DenseNet :math:`(1+h^2)^{n/2}` < ResNet :math:`(1+h^2)^n`
for every :math:`h > 0`, so an order such as "DenseNet121 < VGG16 < ResNet18" can only
come from different depths, stems, heads or constants; :func:`rank` says which.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sympy

from bounds.closed_forms import closed_form, depth_symbol
from bounds.errors import ArgumentError, FamilyError, InvalidValueError
from bounds.families.registry import all_presets, get_family, registered

__all__ = ["PairCondition", "Ranking", "rank"]

#: Largest polynomial degree solved exactly; above it the logarithmic form is kept.
MAX_DEGREE = 160


def _log(expr: sympy.Expr) -> sympy.Expr:
    """:math:`\\log` of a bound, expanded (every factor is positive, so ``force`` is exact)."""
    return sympy.expand_log(sympy.log(expr), force=True)


def _positive_part(difference: sympy.Expr) -> sympy.Expr:
    """``difference`` without its provably positive factors (same sign)."""
    factored = sympy.factor_terms(difference)
    if not factored.is_Mul:
        return factored
    kept = [arg for arg in factored.args if not arg.is_positive]
    return sympy.Mul(*kept)


def _as_inequality(core: sympy.Expr) -> sympy.Basic:
    """``core > 0`` written ``(negative terms) < (positive terms)``."""
    terms = sympy.Add.make_args(core)
    left = sympy.Add(*(-t for t in terms if t.could_extract_minus_sign()))
    right = sympy.Add(*(t for t in terms if not t.could_extract_minus_sign()))
    return sympy.Lt(left, right)


def _polynomial_sides(core: sympy.Expr, x: sympy.Symbol):
    """``(P, N)`` polynomials with ``core > 0  <=>  P > N`` on ``x > 0``, or None."""
    terms = sympy.Add.make_args(core)
    split = []
    for term in terms:
        coeff, rest = term.as_coeff_Mul()
        if not coeff.is_Rational or not isinstance(rest, sympy.log):
            return None
        base = rest.args[0]
        if not (base.is_Rational or (base.is_polynomial(x) and sympy.Poly(base, x).domain
                                     in (sympy.ZZ, sympy.QQ))):
            return None
        split.append((coeff, base))
    k = math.lcm(*(int(coeff.q) for coeff, _ in split))
    positive = sympy.Mul(*(base ** (coeff * k) for coeff, base in split if coeff > 0))
    negative = sympy.Mul(*(base ** (-coeff * k) for coeff, base in split if coeff < 0))
    return positive, negative


def _solve_univariate(core: sympy.Expr, x: sympy.Symbol):
    """The exact solution set of ``core > 0`` on ``x > 0`` as a relational, or None."""
    sides = _polynomial_sides(core, x)
    if sides is None:
        return None
    difference = sympy.Poly(sympy.expand(sides[0] - sides[1]), x)
    if difference.degree() > MAX_DEGREE:
        return None
    if difference.is_zero:
        return sympy.false
    solution = sympy.Union(*sympy.solve_poly_inequality(difference, ">"))
    solution = solution.intersect(sympy.Interval.open(0, sympy.oo))
    if solution == sympy.Interval.open(0, sympy.oo):
        return sympy.true
    return solution.as_relational(x)


def _condition(difference: sympy.Expr) -> sympy.Basic:
    """The exact condition ``difference > 0``, simplified where SymPy can."""
    if difference == 0:
        return sympy.false
    core = _positive_part(difference)
    if core.is_positive:
        return sympy.true
    if core.is_nonpositive:
        return sympy.false
    free = core.free_symbols
    if not free:
        return sympy.true if sympy.N(core, 50) > 0 else sympy.false
    if len(free) == 1:
        solved = _solve_univariate(core, next(iter(free)))
        if solved is not None:
            return solved
    return _as_inequality(core)


def _approximate(expr: sympy.Basic) -> sympy.Basic:
    """``expr`` with every algebraic root replaced by a 6-digit float (for reading)."""
    return expr.xreplace({root: root.evalf(6) for root in expr.atoms(sympy.CRootOf)})


def _truth(condition: sympy.Basic, values: dict) -> bool | None:
    if condition in (sympy.true, sympy.false):
        return bool(condition)
    if not condition.free_symbols <= set(values):
        return None
    result = condition.xreplace(values)
    return bool(result) if result in (sympy.true, sympy.false) else None


@dataclass(frozen=True)
class PairCondition:
    r"""When the bound of ``first`` is smaller than the bound of ``second``.

    Attributes
    ----------
    first, second : str
        Entries of the ranking.
    condition : sympy.Boolean
        Exact condition for :math:`L_{\mathrm{first}} < L_{\mathrm{second}}` over the
        shared symbols and the depths: ``True``, ``False``, a relational in logarithmic
        form, or a solved set in one symbol (bounds of ``CRootOf`` are exact).
    log_form : sympy.Boolean
        The unsimplified equivalent :math:`\log L_{\mathrm{first}} < \log
        L_{\mathrm{second}}` (expanded logarithms).
    holds : bool or None
        The condition at the ranking's values (None without values for all its symbols).
    """

    first: str
    second: str
    condition: sympy.Basic
    log_form: sympy.Basic
    holds: bool | None = None

    def __str__(self) -> str:
        approximate = _approximate(self.condition)
        if approximate == self.condition:
            text = f"{self.first} < {self.second}  iff  {sympy.sstr(self.condition)}"
        else:
            degrees = sorted({root.poly.degree() for root in self.condition.atoms(
                sympy.CRootOf)})
            text = (f"{self.first} < {self.second}  iff  {sympy.sstr(approximate)}   (exact "
                    f"bounds: real roots of polynomials of degree "
                    f"{', '.join(map(str, degrees))}; see --json or .condition)")
        if self.holds is not None:
            text += f"   [{'holds' if self.holds else 'fails'} at the given values]"
        return text

    def to_dict(self) -> dict:
        """JSON-ready dict: strings for the SymPy parts.

        Examples
        --------
        >>> from bounds import rank
        >>> rank(["resnet", "densenet"]).pairs[0].to_dict()["condition"]
        'n_resnet < n_densenet/2'
        """
        return {"first": self.first, "second": self.second,
                "condition": sympy.sstr(self.condition),
                "condition_numeric": sympy.sstr(_approximate(self.condition)),
                "condition_latex": sympy.latex(self.condition),
                "log_form": sympy.sstr(self.log_form), "holds": self.holds}


@dataclass
class Ranking:
    r"""Bounds of several architectures with shared constants, their order and flip conditions.

    Attributes
    ----------
    names : tuple of str
        The entries, in the order given.
    specs : dict
        Name -> ``(family, options)`` used for :func:`bounds.closed_form`.
    bounds : dict
        Name -> closed form of :math:`\operatorname{Lip}(f)` (the Fisher bound is its
        square over 2, so it orders the same way).
    pairs : tuple of PairCondition
        One per unordered pair ``(names[i], names[j])``, ``i < j``.
    values : dict or None
        Symbol -> number, when given.
    log10_lipschitz : dict or None
        Name -> :math:`\log_{10}` of the bound at the values (when all are bound).
    order : tuple of str or None
        Names by increasing bound at the values.
    """

    names: tuple
    specs: dict
    bounds: dict
    pairs: tuple
    values: dict | None = None
    log10_lipschitz: dict | None = None
    order: tuple | None = None
    _logs: dict = field(default_factory=dict, repr=False)
    _conditions: dict = field(default_factory=dict, repr=False)

    def condition(self, first: str, second: str) -> sympy.Basic:
        """The exact condition under which the bound of ``first`` is below ``second``'s.

        Examples
        --------
        >>> from bounds import rank
        >>> r = rank(["vgg", "densenet"], depths={"vgg": "n", "densenet": "n"})
        >>> r.condition("vgg", "densenet"), r.condition("densenet", "vgg")
        (True, False)
        """
        for name in (first, second):
            if name not in self.bounds:
                raise FamilyError(f"Ranking.condition: unknown entry {name!r}; entries: "
                                  f"{', '.join(self.names)}.")
        if (first, second) not in self._conditions:
            self._conditions[first, second] = _condition(self._logs[second]
                                                         - self._logs[first])
        return self._conditions[first, second]

    def order_condition(self, order: Sequence[str]) -> sympy.Basic:
        """The exact condition under which the bounds increase strictly along ``order``.

        Parameters
        ----------
        order : sequence of str
            Entries, claimed smallest first (e.g. ``["densenet121", "vgg16",
            "resnet18"]``).

        Returns
        -------
        sympy.Boolean
            The conjunction of the conditions for consecutive entries (by transitivity
            this is the whole claim).

        Examples
        --------
        >>> from bounds import rank
        >>> r = rank(["vgg", "densenet", "resnet"], depths=dict.fromkeys(
        ...     ["vgg", "densenet", "resnet"], "n"))
        >>> r.order_condition(["vgg", "densenet", "resnet"])
        True
        >>> r.order_condition(["densenet", "vgg", "resnet"])
        False
        """
        return sympy.And(*(self.condition(a, b) for a, b in zip(order, order[1:])))

    def order_holds(self, order: Sequence[str]) -> bool | None:
        """Whether :meth:`order_condition` holds at the ranking's values (None if unknown).

        Examples
        --------
        >>> from bounds import rank
        >>> r = rank(["vgg", "resnet"], values={"h": 0.5, "n_vgg": 2, "n_resnet": 1})
        >>> r.order_holds(["vgg", "resnet"]), r.order_holds(["resnet", "vgg"])
        (True, False)
        """
        numeric = {s: sympy.sympify(v) for s in set().union(*(
            b.free_symbols for b in self.bounds.values()))
            for k, v in (self.values or {}).items() if str(s) == k}
        return _truth(self.order_condition(order), numeric)

    def __str__(self) -> str:
        width = max(map(len, self.names))
        lines = ["Closed-form bounds on Lip(f) with shared per-layer constants "
                 "(Fisher bound lambda_max(F) <= Lip(f)^2/2 orders the same way):"]
        lines += [f"  {name:<{width}}  {sympy.sstr(self.bounds[name])}" for name in self.names]
        if self.order is not None:
            shown = ", ".join(f"{key}={value}" for key, value in self.values.items())
            chain = " < ".join(f"{name} ({_power_of_ten(self.log10_lipschitz[name])})"
                               for name in self.order)
            lines += [f"Order at {shown} (bound on Lip(f) in brackets):", f"  {chain}"]
        elif self.values:
            lines.append("Order: not evaluable, some symbols have no value.")
        lines.append("Conditions (exact, over the shared symbols and the depths):")
        lines += [f"  {pair}" for pair in self.pairs]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dict of the whole ranking.

        Examples
        --------
        >>> import json
        >>> from bounds import rank
        >>> data = rank(["vgg", "resnet"], values={"h": 2, "n_vgg": 3, "n_resnet": 1}).to_dict()
        >>> data["order"], data["pairs"][0]["holds"]
        (['resnet', 'vgg'], False)
        >>> _ = json.dumps(data)
        """
        return {
            "entries": {name: {"family": self.specs[name][0],
                               "options": _jsonable(self.specs[name][1]),
                               "lipschitz": sympy.sstr(self.bounds[name]),
                               "lipschitz_latex": sympy.latex(self.bounds[name])}
                        for name in self.names},
            "values": {key: value if isinstance(value, int) else float(value)
                       for key, value in (self.values or {}).items()},
            "order": list(self.order) if self.order is not None else None,
            "log10_lipschitz": self.log10_lipschitz,
            "pairs": [pair.to_dict() for pair in self.pairs],
        }


def _power_of_ten(log10: float) -> str:
    return f"{10 ** log10:.4g}" if abs(log10) < 15 else f"10^{log10:.2f}"


def _jsonable(options: dict) -> dict:
    return {key: (sympy.sstr(value) if isinstance(value, sympy.Basic) else
                  [sympy.sstr(v) if isinstance(v, sympy.Basic) else v for v in value]
                  if isinstance(value, tuple | list) else value)
            for key, value in options.items()}


def _parse_depth(value):
    """A depth as written on a command line: ``"2,2,2,2"`` -> ``(2, 2, 2, 2)``, ``"16"`` ->
    ``16``; anything else unchanged."""
    if isinstance(value, str) and "," in value:
        value = tuple(item.strip() for item in value.split(","))
    if isinstance(value, tuple | list):
        return tuple(_parse_depth(item) for item in value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _family_name(name: str) -> str | None:
    try:
        return get_family(name).name
    except FamilyError:
        return None


def _specs(families, depths, options) -> dict:
    presets = all_presets()
    specs = {}
    for name in families:
        if name in specs:
            raise FamilyError(f"rank: entry {name!r} appears twice.")
        family = _family_name(name) if isinstance(name, str) else None
        if family is not None:
            opts = {"depth": depth_symbol(f"n_{name}")}
        elif name in presets:
            family, opts = presets[name][0], dict(presets[name][1])
        else:
            raise FamilyError(f"rank: unknown family or preset {name!r}; known: "
                              f"{', '.join((*registered(), *presets))}.")
        if name in depths:
            opts["depth"] = _parse_depth(depths[name])
        opts.update(options.get(name, {}))
        opts.pop("shared", None)
        specs[name] = (family, opts)
    for name in (*depths, *options):
        if name not in specs:
            raise FamilyError(f"rank: depth or options given for {name!r}, which is not "
                              f"among the entries {', '.join(specs)}.")
    return specs


def _numeric_values(values, symbols) -> dict:
    by_name = {str(s): s for s in symbols}
    result = {}
    for key, value in values.items():
        number = value if isinstance(value, sympy.Basic) else None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = sympy.sympify(value)
        if number is None or not (number.is_extended_real and number.is_positive
                                  and number.is_finite):
            raise InvalidValueError(f"rank: expected the value of {key} to be a finite number "
                                    f"> 0 (rankings compare logarithms), got {value!r}.")
        if str(key) in by_name:
            result[by_name[str(key)]] = sympy.nsimplify(value) if isinstance(
                value, int) else sympy.sympify(value)
    return result


def rank(families: Sequence[str] | None = None, depths: Mapping | None = None,
         values: Mapping | None = None, *, options: Mapping | None = None,
         symbol: str = "h") -> Ranking:
    r"""Order the bounds of several families under shared per-layer constants.

    Every entry's bound is :func:`bounds.closed_form` with ``shared=True``: all
    convolutions and linear layers have the constant ``h`` (``symbol``), all LayerNorms
    ``ell``, all attention heads ``a``. Depths are symbols ``n_<family>`` unless given.
    For every pair the exact condition under which the first bound is below the second is
    derived (see the module docstring), so a claimed order can be checked for all
    constants at once (:meth:`Ranking.order_condition`), not only at one point.

    Parameters
    ----------
    families : sequence of str, optional
        Family names or aliases (``vgg``, ``resnet``, ``densenet``, ``transformer``, and
        any registered family; symbolic depth) or presets (``vgg16``, ``resnet18``,
        ``densenet121``, ``vit_b_16``, ...; their depths) from :data:`bounds.PRESETS`.
        Default: every registered family.
    depths : mapping, optional
        Entry -> depth: an int, a symbol name (entries given the same name share it, e.g.
        ``"n"``), or a tuple / comma-separated string of stage sizes.
    values : mapping, optional
        Symbol (or name) -> number, e.g. ``{"h": 1.2, "n_vgg": 16}``; with values for all
        symbols the ranking is evaluated and ordered.
    options : mapping, optional
        Entry -> extra builder options (``{"resnet": {"block": "bottleneck"}}``).
    symbol : str, default "h"
        Name of the shared layer constant.

    Returns
    -------
    Ranking

    Raises
    ------
    FamilyError
        If an entry is unknown or repeated, or a depth or option is invalid.
    ArgumentError
        If ``values`` is not a mapping.
    InvalidValueError
        If a value is not a finite number > 0 (the comparisons are of logarithms).

    Notes
    -----
    Comparisons are of bounds, not of the networks' true Lipschitz constants or Fisher
    information: a bound that is larger may still belong to the smoother network.

    References
    ----------
    Scaman and Virmaux, NeurIPS 2018, arXiv:1805.10965.

    Examples
    --------
    >>> from bounds import rank
    >>> r = rank(["vgg", "densenet"])
    >>> r.bounds["vgg"], r.bounds["densenet"]
    (h**n_vgg, (h**2 + 1)**(n_densenet/2))
    >>> r.pairs[0].condition
    n_vgg*log(h) < n_densenet*log(h**2 + 1)/2
    >>> r = rank(["vgg16", "resnet18", "densenet121"], values={"h": 1.2})
    >>> r.order
    ('vgg16', 'resnet18', 'densenet121')
    >>> r.condition("densenet121", "vgg16")
    False
    """
    depths, options = dict(depths or {}), dict(options or {})
    families = registered() if families is None else families
    if values is not None and not isinstance(values, Mapping):
        raise ArgumentError(f"rank: expected values to be a mapping, got {values!r}.")
    specs = _specs(families, depths, options)
    bounds = {}
    for name, (family, opts) in specs.items():
        opts = dict(opts)
        bounds[name] = closed_form(family, opts.pop("depth"), shared=True, symbol=symbol,
                                   **opts)
    logs = {name: _log(bound) for name, bound in bounds.items()}
    names = tuple(specs)
    symbols = set().union(*(bound.free_symbols for bound in bounds.values()))
    numeric = _numeric_values(values or {}, symbols)
    ranking = Ranking(names, specs, bounds, (),
                      values={str(k): v for k, v in values.items()} if values else None,
                      _logs=logs)
    pairs = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            condition = ranking.condition(first, second)
            log_form = sympy.Lt(logs[first], logs[second])
            pairs.append(PairCondition(first, second, condition, log_form,
                                       _truth(condition, numeric) if values else None))
    ranking.pairs = tuple(pairs)
    if values and all(logs[name].free_symbols <= set(numeric) for name in names):
        log10 = {name: float(sympy.N(logs[name].xreplace(numeric) / sympy.log(10), 30))
                 for name in names}
        ranking.log10_lipschitz = log10
        ranking.order = tuple(sorted(names, key=log10.__getitem__))
    return ranking
