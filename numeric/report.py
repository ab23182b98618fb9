"""Transitional alias: the check's report moved to :mod:`numeric.check.report`.

Only :func:`write_json_atomic` is kept here, for ``numeric.commands.estimate``; import it
from :mod:`numeric.check.results` instead (this module goes once nothing imports it).
"""

from numeric.check.results import write_json_atomic

__all__ = ["write_json_atomic"]
