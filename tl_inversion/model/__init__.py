"""The probed model: the only code that touches TransformerLens models.

Modules: :mod:`.protocol` (``ProbedModel``: the TransformerLens surface used),
:mod:`.checks` (model, token and left-padding checks every entry point runs),
:mod:`.sites` (hook name + head; parsing and validation against ``hook_dict``; ``SiteDict``),
:mod:`.activations` (harvesting many sites in one forward, running with hooks, train/eval
flags), :mod:`.fingerprints` (what a decoder bank records of the model it was trained on),
:mod:`.loading` (a local Hugging Face GPT-2 folder as a ``HookedTransformer`` or a
``TransformerBridge``).
"""
