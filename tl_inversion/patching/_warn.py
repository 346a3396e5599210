"""Warnings of the patching stage (all :class:`~tl_inversion.errors.TLInversionWarning`).

Each names a result that is valid to compute but misleading to read: a circuit that cannot
carry information from the input to the output, a path that cannot carry any effect by
construction, answers the model does not predict.
"""

from __future__ import annotations

from tl_inversion.errors import TLInversionWarning


class PatchingWarning(TLInversionWarning):
    """Base class of the patching warnings."""


class DisconnectedCircuitWarning(PatchingWarning):
    """A circuit has no path from the embeddings to the output (its score measures nothing
    the input can change: it is what ablating every component gives).
    """


class NoEffectEdgeWarning(PatchingWarning):
    """A path-patching edge whose sender positions never meet its receiver positions: the
    patched effect is exactly 0 by construction.
    """


class AnswerCheckWarning(PatchingWarning):
    """The clean metric says the model does not predict the given answers (wrong ids?)."""


__all__ = ["AnswerCheckWarning", "DisconnectedCircuitWarning", "NoEffectEdgeWarning", "PatchingWarning"]
