"""From a query activation to its verified preimage (paper sections 2-3).

Modules: :mod:`.distance` (the paper's distance D and matching position), :mod:`.verify`
(running decoded inputs back through the probed model: membership and faithfulness),
:mod:`.sampling` (query -> candidate pool -> scored, verified samples).
"""
