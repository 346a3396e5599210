"""How good are the decoders, and what do their samples say: faithfulness, completeness,
feature consistency, and the ``evaluate`` report that runs them from a plan.
"""
