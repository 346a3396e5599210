"""One checked (probed model, decoder bank, task): :class:`Inverter`.

Every sampling call checks that the bank was trained on the model it is given (a hash of
every weight and a probe forward, :meth:`~tl_inversion.decoding.bank.DecoderBank.check_model`).
That is right for one call and wasteful for many: an :class:`Inverter` checks once, then
samples (:meth:`Inverter.sample`, :meth:`Inverter.sample_many`) and evaluates
(:meth:`Inverter.evaluate`) without checking again.

Where it lives: here, in :mod:`tl_inversion.evaluation`, rather than in
:mod:`tl_inversion.inversion`, because :meth:`Inverter.evaluate` runs the evaluation, and
the inversion stage must not import the evaluation stage (data flows one way); sampling
itself is :func:`tl_inversion.inversion.sampling.sample_checked`, which this class calls.
:func:`~tl_inversion.evaluation.evaluate` builds one too, so an evaluation fingerprints the
model once.

Do not change the model's weights (or the bank) after building an Inverter: the check
would no longer hold; build a new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.inversion.result import PreimageResult
from tl_inversion.inversion.sampling import sample_checked
from tl_inversion.model.sites import SiteLike
from tl_inversion.tasks import as_task
from tl_inversion.tasks.plan import EvalPlan

if TYPE_CHECKING:  # pragma: no cover
    from tl_inversion.evaluation.report import EvaluationReport

__all__ = ["Inverter"]


class Inverter:
    """A probed model, a decoder bank trained on it and their task, checked once.

    Args:
        model: the probed model (``HookedTransformer`` or ``TransformerBridge``).
        bank: a :class:`~tl_inversion.decoding.bank.DecoderBank` trained on ``model``.
        task: the task or its registered name.
        allow_mismatch: warn instead of raising when the model is not the bank's.

    Raises:
        ModelMismatchError: the bank was trained on another model (and not ``allow_mismatch``).
        InputValueError: the bank was trained on another task, or an unknown task name.

    Source: InversionView (arXiv 2405.17653) Sec. 3 (sampling), App. C (faithfulness).
    """

    def __init__(self, model: Any, bank: Any, task: Any, *, allow_mismatch: bool = False) -> None:
        self.model = model
        self.bank = bank
        self.task = as_task(task)
        bank.check_model(model, allow_mismatch=allow_mismatch)  # the one fingerprint
        bank.check_task(self.task)

    def __repr__(self) -> str:
        sites = [str(s) for s in self.bank.sites]
        shown = ", ".join(sites[:4]) + (f", ... ({len(sites)} sites)" if len(sites) > 4 else "")
        return f"Inverter(task={self.task.name!r}, model={type(self.model).__name__}, sites=[{shown}])"

    def sample(self, query: Int[Tensor, " n_ctx"] | str, site: SiteLike, position: int | str,
               **kwargs: Any) -> PreimageResult:
        """Sample, verify and colour the preimage of one query
        (:func:`~tl_inversion.inversion.sampling.sample_preimage` without the model check).

        Args:
            query: a text or token ids ``[n_ctx]`` / ``[1, n_ctx]``.
            site: the queried site.
            position: an index or a task position name.
            **kwargs: ``schedule``, ``n_repeats``, ``batch_size``, ``epsilon``, ``metric``,
                ``seed``, ``colour``, ``max_batch`` as ``sample_preimage``.

        Returns:
            A :class:`~tl_inversion.inversion.result.PreimageResult`.

        Raises:
            As ``sample_preimage`` (InputTypeError for a query or position of the wrong type,
            InputValueError for more than one query row).
        """
        if isinstance(query, Tensor) and query.ndim == 2 and query.shape[0] != 1:
            raise InputValueError(f"sample takes one query, got {query.shape[0]} rows; use sample_many")
        if not isinstance(query, (str, Tensor)):
            raise InputTypeError(
                f"query must be a text or a token tensor [n_ctx] / [1, n_ctx], got {type(query).__name__}"
            )
        if not isinstance(position, (int, str)) or isinstance(position, bool):
            raise InputTypeError(f"position must be an int or a task position name, got {type(position).__name__}")
        (result,) = self.sample_many(query, site, position, **kwargs)
        return result

    def sample_many(
        self,
        queries: Int[Tensor, "Q n_ctx"] | Sequence[str] | str,
        site: SiteLike,
        positions: Int[Tensor, " Q"] | Sequence[int | str] | int | str,
        **kwargs: Any,
    ) -> list[PreimageResult]:
        """Sample the preimages of many queries at one site, batched
        (:func:`~tl_inversion.inversion.sampling.sample_checked`).

        Args:
            queries: texts or token ids ``[Q, n_ctx]``.
            positions: one for all or one per query.
            site: the queried site.
            **kwargs: as :func:`~tl_inversion.inversion.sampling.sample_many` (without
                ``allow_mismatch``: the check was made when the Inverter was built).

        Returns:
            One :class:`~tl_inversion.inversion.result.PreimageResult` per query.
        """
        return sample_checked(self.bank, self.model, self.task, queries, site, positions, **kwargs)

    def evaluate(
        self, eval_data: Int[Tensor, "n n_ctx"], plan: EvalPlan | None = None, **kwargs: Any
    ) -> "EvaluationReport":
        """Faithfulness, feature consistency and completeness per site and position
        (:func:`~tl_inversion.evaluation.evaluate` without the model check).

        Args:
            eval_data: held-out inputs ``[n, n_ctx]``.
            plan: what to measure (``None``: the task's default plan).
            **kwargs: the keyword arguments of :func:`~tl_inversion.evaluation.evaluate`.

        Returns:
            An :class:`~tl_inversion.evaluation.report.EvaluationReport`.
        """
        from tl_inversion.evaluation.evaluate import run_evaluation  # evaluate builds Inverters itself
        from tl_inversion.tasks.plan import default_plan

        return run_evaluation(self, eval_data, plan or default_plan(self.task), **kwargs)
