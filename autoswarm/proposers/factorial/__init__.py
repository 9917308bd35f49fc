"""``--strategy factorial``: waves of two-level designs around the best, then combine the winners.

The package, by concern:

* :mod:`~autoswarm.proposers.factorial.proposer`: :class:`FactorialProposer`, the
  waves' state, their analysis and what to hand out next (the strategy is described
  in its docstring);
* :mod:`~autoswarm.proposers.factorial.designs`: the designs (pyDOE3), factor levels
  and the path of steepest descent, as pure functions;
* :mod:`~autoswarm.proposers.factorial.walls`: crash walls, the knob values past which
  runs crash, which designs and paths stay short of.
"""

from autoswarm.proposers.factorial.designs import two_level_design
from autoswarm.proposers.factorial.proposer import FactorialProposer

__all__ = ["FactorialProposer", "two_level_design"]
