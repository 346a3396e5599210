"""Causal verification: activation patching and path patching of a hypothesised circuit.

Modules: :mod:`.notation` (circuit notation: nodes, edges, positions), :mod:`.contrasts`
(clean/corrupted input pairs per task), :mod:`.activation` (activation patching, cumulative
patching, circuit faithfulness, feature verification), :mod:`.path` (path patching).
"""
