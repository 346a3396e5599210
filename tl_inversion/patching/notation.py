"""Circuit hypotheses as data: nodes, groups of nodes, edges, circuits.

A reading from InversionView (Huang et al. 2024, Sec. 4) is a hypothesis ("the layer-1
head at ``:`` carries the count") until patching confirms it. This module writes such
hypotheses down so that :mod:`tl_inversion.patching` and :mod:`tl_inversion.path_patching`
can test them.

* A :class:`Node` is a :class:`~tl_inversion.sites.Site` (a TransformerLens hook name,
  optionally one head) at some positions (``None`` = every position). Positions are
  integers (absolute indices; negative ones count from the end of the row, as in Python) or
  names that a task resolves per row (counting: ``"tc"``/``"c"``, ``":"``, ``"n"``, ``"|"``),
  so that positions are matched between a clean and a contrast input by their role, not
  their index (InversionView's counting patching matches them relative to EOS).
* A :class:`NodeGroup` is several nodes patched together (one row of a result table).
* An :class:`Edge` is a sender node and a receiver node and the receiver's *input* the path
  enters through: ``"q"``, ``"k"``, ``"v"`` (per-head attention inputs) or ``"resid"`` (the
  receiver's own hook value: a residual-stream site, or a component such as an MLP or a head
  taking all its inputs); used by path patching (Wang et al. 2022).
* A :class:`Circuit` is a set of nodes and edges with a name.

Short notation (the grammar; whitespace around tokens is ignored)::

    group     := node ( " + " node )*                 # "+" surrounded by spaces
    edge      := node "->" node                       # receiver may carry an input suffix
    node      := component [ "." input ] [ "@" positions ]
    positions := "*" | position ( "," position )*    # "*" or no "@": every position
    position  := integer | name                       # name: resolved by the task
    input     := "q" | "k" | "v"                      # only on a receiver, only on heads
    component :=
        "e_tok" | "embed"                 -> hook_embed               (token embedding)
      | "e_pos" | "pos_embed"             -> hook_pos_embed           (position embedding)
      | "a" L                             -> blocks.L.attn.hook_result, all heads
      | "a" L "." H | L "." H | "L" L "H" H
                                          -> blocks.L.attn.hook_result[H]  (one head's output)
      | "m" L | "mlp" L                   -> blocks.L.hook_mlp_out
      | ("resid_pre"|"resid_mid"|"resid_post") ["."] L
                                          -> blocks.L.hook_resid_pre / _mid / _post
      | <any TransformerLens hook name> [ "[" H "]" ]   e.g. blocks.0.attn.hook_z[1]

Examples: ``"a1@:"`` (layer-1 head output(s) at ``:``), ``"0.1@tc"``, ``"L1H0@-1"``,
``"e_pos@tc,:"``, ``"a0@tc + e_tok@tc"`` (a group), ``"a0@tc -> a1.0.v@:"`` (an edge into
head 1.0's value input at ``:``; with the value input the positions are key positions).

Patching a head's output means patching ``blocks.L.attn.hook_z[:, pos, H]``: the head's
output is ``z @ W_O[H]`` (``b_O`` is shared and input-independent), so this equals patching
``hook_result`` without needing ``set_use_attn_result`` (which some bridges refuse).

Layout: the grammar's text-level parsing (components, position lists, input suffixes) is
in :mod:`tl_inversion.patching._grammar`; this module builds the data classes from it and
resolves positions per row (:func:`resolve_position`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import NotationError
from tl_inversion.model.sites import Site, SiteError, parse_site, validate_site
from tl_inversion.patching._grammar import (
    _HOOK_RESULT_RE,
    GRAMMAR_HINT,
    INPUTS,
    PositionLike,
    _format_positions,
    _normalise_positions,
    _parse_positions,
    _split_node,
    format_component,
    parse_component,
)
from tl_inversion.tasks.base import PositionError

__all__ = [
    "GRAMMAR_HINT", "INPUTS", "Circuit", "Edge", "EdgeLike", "GroupLike", "Node", "NodeGroup", "NodeLike",
    "NotationError", "PositionError", "PositionLike", "Resolver", "SiteError", "format_component",
    "parse_component", "parse_groups", "parse_node", "resolve_position",
]

# Nodes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A site at some positions: one unit that is patched as a whole.

    Args:
        site: the hook (and optional head) patched. Per-head outputs
            ``blocks.L.attn.hook_result[H]`` are patched through ``hook_z`` (see module doc).
        positions: positions patched, as ints or task names; ``None`` = every position.
        label: display name; defaults to the short notation. Not part of equality.
    """

    site: Site | str  # normalised to a Site
    positions: Any = None  # an int, a name or a sequence of them; normalised to tuple[PositionLike, ...] | None
    label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", parse_site(self.site))
        object.__setattr__(self, "positions", _normalise_positions(self.positions))

    @classmethod
    def parse(cls, spec: "NodeLike") -> "Node":
        """Parse short notation (see the module docstring) into a node.

        Raises:
            NotationError: bad notation, or an input suffix (``.q``), which only edges take.
        """
        if isinstance(spec, Node):
            return spec
        if isinstance(spec, Site):
            return cls(spec)
        if not isinstance(spec, str):
            raise NotationError(f"a node is a Node, a Site or a string like 'a1@:', got {type(spec).__name__}")
        comp, input_, positions = _split_node(spec)
        if input_ is not None:
            raise NotationError(
                f"{spec!r}: an input suffix .{input_} belongs to the receiver of an edge ('sender -> receiver'), "
                "not to a node that is patched"
            )
        return cls(parse_component(comp), _parse_positions(positions))

    @property
    def notation(self) -> str:
        """Canonical short notation, e.g. ``"a1@:"``."""
        return format_component(self.site) + _format_positions(self.positions)

    @property
    def name(self) -> str:
        """The label if one was given, else the short notation."""
        return self.label or self.notation

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        pos = "all positions" if self.positions is None else list(self.positions)
        return f"Node({self.name!r}: {self.site} at {pos})"

    @property
    def hook(self) -> str:
        """The hook whose value is patched (``hook_z`` for per-head outputs)."""
        return self.site.read_hook

    @property
    def head(self) -> int | None:
        """Head index of the patched hook, or ``None`` for the whole hook."""
        return self.site.head

    @property
    def layer(self) -> int | None:
        """Block index (``-1`` for embeddings, ``None`` after the blocks)."""
        return self.site.layer

    @property
    def is_attention(self) -> bool:
        """Whether the node is attention-head output (``hook_result``/``hook_z``)."""
        return bool(_HOOK_RESULT_RE.match(self.site.hook))

    def at(self, *positions: PositionLike) -> "Node":
        """The same site at other positions (no argument: every position)."""
        return Node(self.site, positions or None)

    def validate(self, model: Any) -> "Node":
        """Check the site against the model (hook name, head range); returns the node.

        Raises:
            SiteError: unknown hook (with the closest valid names) or head out of range.
        """
        site = validate_site(self.site, model)
        if site != self.site:
            return Node(site, self.positions, self.label)
        return self


NodeLike = Union[Node, Site, str]


def parse_node(spec: NodeLike) -> Node:
    """Parse one node (see :meth:`Node.parse`)."""
    return Node.parse(spec)


# Groups ---------------------------------------------------------------------------------

_GROUP_SPLIT = re.compile(r"\s+\+\s+")


@dataclass(frozen=True)
class NodeGroup:
    """Nodes patched together; one row of a result table.

    Args:
        nodes: the nodes (order kept, duplicates dropped).
        label: display name; defaults to the nodes' names joined by ``" + "``.
    """

    nodes: Any  # NodeLike items; normalised to tuple[Node, ...]
    label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        uniq: list[Node] = []
        for n in self.nodes:
            n = Node.parse(n)
            if n not in uniq:
                uniq.append(n)
        if not uniq:
            raise NotationError("a node group needs at least one node")
        object.__setattr__(self, "nodes", tuple(uniq))

    @classmethod
    def parse(cls, spec: "GroupLike", label: str | None = None) -> "NodeGroup":
        """A group from ``"a0@tc + e_tok@tc"``, a node, or a sequence of nodes.

        A string keeps its text (whitespace normalised) as the label, so result tables are
        indexed by what was written; other forms are named by their nodes' notation.
        """
        if isinstance(spec, NodeGroup):
            return spec if label is None else cls(spec.nodes, label)
        if isinstance(spec, (Node, Site)):
            return cls((Node.parse(spec),), label)
        if isinstance(spec, str):
            parts = [p for p in _GROUP_SPLIT.split(spec.strip())]
            if any("+" == p.strip() or not p.strip() for p in parts):
                raise NotationError(
                    f"cannot parse group {spec!r}: write nodes joined by ' + ', e.g. 'a0@tc + e_tok@tc'"
                )
            # a group written as a string keeps what was written as its label
            return cls(tuple(Node.parse(p) for p in parts), label if label is not None else " ".join(spec.split()))
        if isinstance(spec, Iterable):
            return cls(tuple(Node.parse(p) for p in spec), label)
        raise NotationError(f"a group is a string, a node, or a sequence of nodes, got {type(spec).__name__}")

    @property
    def name(self) -> str:
        """The label if given, else the nodes joined by ``" + "`` (parenthesised if several)."""
        if self.label:
            return self.label
        if len(self.nodes) == 1:
            return self.nodes[0].name
        return "(" + ", ".join(n.name for n in self.nodes) + ")"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"NodeGroup({self.name!r}: {[n.notation for n in self.nodes]})"

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __add__(self, other: "GroupLike") -> "NodeGroup":
        return NodeGroup(self.nodes + NodeGroup.parse(other).nodes)


GroupLike = Union[NodeGroup, Node, Site, str, Sequence[NodeLike]]


def parse_groups(spec: Any) -> list[NodeGroup]:
    """Many groups: a mapping ``{label: group}``, a sequence of groups, or one group.

    A sequence of strings is a sequence of groups (each string may itself be a group with
    ``" + "``); to patch several nodes together pass a :class:`NodeGroup`, a string with
    ``" + "`` or a tuple/list nested inside the sequence.
    """
    if isinstance(spec, Mapping):
        return [NodeGroup.parse(v, label=str(k)) for k, v in spec.items()]
    if isinstance(spec, (str, Node, Site, NodeGroup)):
        return [NodeGroup.parse(spec)]
    if isinstance(spec, Iterable):
        return [NodeGroup.parse(g) for g in spec]
    raise NotationError(f"cannot read node groups from {type(spec).__name__}")


# Edges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """A path from a sender node into a receiver node through one of its inputs.

    Args:
        sender: the node whose activation is changed (patched from the source).
        receiver: the node that receives the change.
        input: how the path enters the receiver: ``"q"``, ``"k"`` or ``"v"`` (per-head
            attention inputs; the receiver must be attention-head output, and its positions
            are query positions for ``"q"`` and key positions for ``"k"``/``"v"``) or
            ``"resid"`` (the receiver's own hook value, recomputed with only the sender
            changed; for a residual site that is the residual stream itself).

    Raises:
        NotationError: unknown input, or q/k/v on a receiver that is not attention-head output.
    """

    sender: Any  # NodeLike; normalised to a Node
    receiver: Any  # NodeLike; normalised to a Node
    input: str = "resid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender", Node.parse(self.sender))
        object.__setattr__(self, "receiver", Node.parse(self.receiver))
        if self.input not in INPUTS:
            raise NotationError(f"edge input must be one of {INPUTS}, got {self.input!r}")
        if self.input != "resid" and not self.receiver.is_attention:
            raise NotationError(
                f"input {self.input!r} needs an attention-head receiver (aL, aL.H, L.H), got {self.receiver.notation!r}"
            )

    @classmethod
    def parse(cls, spec: "EdgeLike") -> "Edge":
        """An edge from ``"a0@tc -> a1.0.v@:"`` (``.q``/``.k``/``.v`` on the receiver; none = resid).

        Raises:
            NotationError: no ``->``, or bad node notation on either side.
        """
        if isinstance(spec, Edge):
            return spec
        if isinstance(spec, tuple) and len(spec) in (2, 3):
            return cls(*spec)
        if not isinstance(spec, str) or "->" not in spec:
            raise NotationError(f"an edge is written 'sender -> receiver[.q|.k|.v][@positions]', got {spec!r}")
        left, right = spec.split("->", 1)
        sender = Node.parse(left)
        comp, input_, positions = _split_node(right)
        receiver = Node(parse_component(comp), _parse_positions(positions))
        return cls(sender, receiver, input_ or "resid")

    @property
    def receiver_notation(self) -> str:
        """The receiver in short notation with its input suffix, e.g. ``"a1.0.v@:"``."""
        suffix = "" if self.input == "resid" else f".{self.input}"
        return format_component(self.receiver.site) + suffix + _format_positions(self.receiver.positions)

    @property
    def name(self) -> str:
        """``"sender -> receiver"`` in short notation (parses back to this edge)."""
        return f"{self.sender.name} -> {self.receiver_notation}"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Edge({self.name!r})"


EdgeLike = Union[Edge, str, tuple]


# Circuits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Circuit:
    """A circuit hypothesis: nodes (and, for path patching, edges).

    Args:
        nodes: the nodes kept intact (faithfulness) or patched (activation patching).
        edges: paths sender -> receiver (path patching). Their endpoints need not be listed
            in ``nodes``.
        name: display name.
    """

    nodes: Any = ()  # GroupLike items (or one); normalised to tuple[Node, ...]
    edges: Any = ()  # EdgeLike items (or one); normalised to tuple[Edge, ...]
    name: str = "circuit"

    def __post_init__(self) -> None:
        nodes: list[Node] = []
        for n in self.nodes if not isinstance(self.nodes, (str, Node)) else [self.nodes]:
            for m in NodeGroup.parse(n).nodes:
                if m not in nodes:
                    nodes.append(m)
        edges = [Edge.parse(e) for e in (self.edges if not isinstance(self.edges, (str, Edge)) else [self.edges])]
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "edges", tuple(dict.fromkeys(edges)))

    @classmethod
    def parse(cls, text: str, name: str = "circuit") -> "Circuit":
        """A circuit from one string: items separated by ``;`` or newlines; an item with
        ``->`` is an edge, any other a node or ``" + "`` group.

        Example: ``"e_pos@tc,:; e_tok@tc; a0@tc; a0@:; a1@:; a0@tc -> a1.v@:"``.
        """
        nodes, edges = [], []
        for item in re.split(r"[;\n]", text):
            item = item.strip()
            if not item:
                continue
            (edges if "->" in item else nodes).append(item)
        return cls(tuple(nodes), tuple(edges), name)

    def __str__(self) -> str:
        lines = [f"{self.name}: {len(self.nodes)} nodes, {len(self.edges)} edges"]
        for n in self.nodes:
            where = "*" if n.positions is None else ",".join(map(str, n.positions))
            lines.append(f"  node  {n.name:<16} {n.site} at {where}")
        lines += [f"  edge  {e.name}" for e in self.edges]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Circuit({self.name!r}, nodes={[n.name for n in self.nodes]}, edges={[e.name for e in self.edges]})"

    def validate(self, model: Any) -> "Circuit":
        """Check every node's and edge endpoint's site against the model.

        Raises:
            SiteError: a site does not fit the model.
        """
        nodes = tuple(n.validate(model) for n in self.nodes)
        edges = tuple(Edge(e.sender.validate(model), e.receiver.validate(model), e.input) for e in self.edges)
        return Circuit(nodes, edges, self.name)


# Positions ------------------------------------------------------------------------------

Resolver = Union[None, Any, Mapping[str, Callable[[Tensor], Tensor]]]


def resolve_position(
    tokens: Int[Tensor, "batch pos"], position: PositionLike, positions: Resolver = None
) -> Int[Tensor, " batch"]:
    """Absolute index of a position in each row.

    Args:
        tokens: token ids ``[batch, pos]``.
        position: an int (absolute index; negative counts from the end of the row) or a name.
        positions: what resolves names: a task (any object with
            ``resolve_position(tokens, position)``, e.g. :func:`tl_inversion.tasks.counting.make_task`),
            a mapping ``{name: fn(tokens) -> index [batch]}``, or ``None`` (ints only).

    Returns:
        Indices ``[batch]`` (long, on the tokens' device).

    Raises:
        PositionError: an int outside ``-pos..pos-1``, an unknown name (the message lists
            the valid names), or a resolved index out of range.
    """
    n = tokens.shape[-1]
    if positions is not None and hasattr(positions, "resolve_position"):
        idx = positions.resolve_position(tokens, position)
    elif isinstance(position, int) and not isinstance(position, bool):
        if not -n <= position < n:
            raise PositionError(f"position {position} out of range for inputs of length {n}: valid {-n}..{n - 1}")
        idx = torch.full((tokens.shape[0],), position % n, dtype=torch.long)
    elif isinstance(positions, Mapping):
        if position not in positions:
            raise PositionError(
                f"no position named {position!r}; named positions: {', '.join(map(repr, positions))}, "
                "or an integer index"
            )
        idx = positions[position](tokens)
    else:
        raise PositionError(
            f"position {position!r} is a name, but no task or name mapping was given to resolve it "
            "(pass positions=make_task() or positions={name: fn}); or use an integer index"
        )
    idx = torch.as_tensor(idx, dtype=torch.long).to(tokens.device)
    if idx.shape != (tokens.shape[0],):
        raise PositionError(
            f"position {position!r} resolved to shape {tuple(idx.shape)}, expected ({tokens.shape[0]},)"
        )
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise PositionError(f"position {position!r} resolved outside 0..{n - 1} in some rows")
    return idx
