"""Circuit hypotheses as data: the short notation, its errors, and position resolution."""

from __future__ import annotations

import pytest
import torch

from tl_inversion.model.sites import Site, SiteError
from tl_inversion.patching.notation import (
    Circuit,
    Edge,
    Node,
    NodeGroup,
    NotationError,
    parse_component,
    parse_groups,
    resolve_position,
)
from tl_inversion.tasks.base import PositionError
from tl_inversion.tasks.counting import make_task


@pytest.mark.parametrize(
    "text, hook, head, positions",
    [
        ("a1@:", "blocks.1.attn.hook_result", None, (":",)),
        ("a1.0@:", "blocks.1.attn.hook_result", 0, (":",)),
        ("1.0@:", "blocks.1.attn.hook_result", 0, (":",)),
        ("L1H0@:", "blocks.1.attn.hook_result", 0, (":",)),
        ("L12H3", "blocks.12.attn.hook_result", 3, None),
        ("e_pos@tc,:", "hook_pos_embed", None, ("tc", ":")),
        ("e_tok@tc", "hook_embed", None, ("tc",)),
        ("embed@*", "hook_embed", None, None),
        ("m0@-1", "blocks.0.hook_mlp_out", None, (-1,)),
        ("mlp3@2", "blocks.3.hook_mlp_out", None, (2,)),
        ("resid_post.1@ 5 , tc", "blocks.1.hook_resid_post", None, (5, "tc")),
        ("resid_pre2", "blocks.2.hook_resid_pre", None, None),
        ("blocks.0.attn.hook_z[1]@3", "blocks.0.attn.hook_z", 1, (3,)),
        ("blocks.0.hook_resid_mid", "blocks.0.hook_resid_mid", None, None),
    ],
)
def test_node_notation(text, hook, head, positions):
    node = Node.parse(text)
    assert node.site == Site(hook, head)
    assert node.positions == positions
    # the canonical form parses back to the same node
    assert Node.parse(node.notation) == node


def test_head_output_is_patched_through_hook_z():
    node = Node.parse("a1.0@:")
    assert node.hook == "blocks.1.attn.hook_z" and node.head == 0 and node.layer == 1
    assert node.is_attention and not Node.parse("m1").is_attention
    assert Node.parse("e_tok").layer == -1


def test_labels_and_repr():
    node = Node(Site("blocks.1.attn.hook_result", 0), (":",), label="a1@:")
    assert str(node) == "a1@:" and node == Node.parse("1.0@:")  # labels are not part of equality
    assert "blocks.1.attn.hook_result[0]" in repr(node) and "':'" in repr(node)
    assert str(Node.parse("1.0@:")) == "a1.0@:"
    assert Node.parse("a0").at("tc", ":") == Node.parse("a0@tc,:")


@pytest.mark.parametrize(
    "bad, words",
    [
        ("x1@:", "unknown component"),
        ("a1@tc@:", "two '@'"),
        ("@:", "no component"),
        ("a1@tc,,:", "empty position"),
        ("a1.q@:", "receiver of an edge"),
        ("blocks.0.attn.hook_z[", "cannot parse"),
        ("", "no component"),
    ],
)
def test_bad_notation_names_the_grammar(bad, words):
    with pytest.raises(NotationError, match=words):
        Node.parse(bad)


def test_non_string_node_is_refused():
    with pytest.raises(NotationError):
        Node.parse(3.5)
    with pytest.raises(NotationError):
        Node(Site("hook_embed"), (1.5,))


def test_component_hint_lists_forms():
    with pytest.raises(NotationError) as e:
        parse_component("head1")
    assert "aL.H" in str(e.value) and "e_pos" in str(e.value)


def test_groups():
    g = NodeGroup.parse("a0@tc + e_tok@tc")
    assert [n.notation for n in g] == ["a0@tc", "e_tok@tc"]
    assert g.name == "a0@tc + e_tok@tc"  # written text is the label
    assert NodeGroup((Node.parse("a0@tc"), Node.parse("e_tok@tc"))).name == "(a0@tc, e_tok@tc)"
    assert NodeGroup.parse(["a0@tc", "a0@tc", "e_tok@tc"]) == g  # duplicates dropped
    assert NodeGroup.parse("a1@:", label="head").name == "head"
    assert len(g + "a1@:") == 3
    # "+" without spaces is not a separator (addition has a position named "+")
    assert NodeGroup.parse("a0@+").nodes[0].positions == ("+",)
    groups = parse_groups(["e_pos@tc,:", ("a0@tc", "e_tok@tc"), "a1@:"])
    assert [len(x) for x in groups] == [1, 2, 1]
    by_label = parse_groups({"count": "a0@tc + e_tok@tc"})
    assert by_label[0].name == "count"
    with pytest.raises(NotationError):
        NodeGroup(())


def test_edges():
    e = Edge.parse("a0@tc -> a1.0.v@:")
    assert e.sender == Node.parse("a0@tc")
    assert e.receiver == Node.parse("a1.0@:") and e.input == "v"
    assert e.name == "a0@tc -> a1.0.v@:"
    assert Edge.parse(e.name) == e
    r = Edge.parse("e_tok -> resid_post.1@-1")
    assert r.input == "resid" and r.receiver.site == Site("blocks.1.hook_resid_post")
    assert Edge.parse("L0H1 -> L1H0.q").receiver.head == 0
    with pytest.raises(NotationError, match="attention-head receiver"):
        Edge.parse("a0 -> m1.q")
    with pytest.raises(NotationError, match="sender -> receiver"):
        Edge.parse("a0 a1")
    with pytest.raises(NotationError, match="input must be"):
        Edge("a0", "a1", "x")


def test_circuit_parse_and_repr():
    c = Circuit.parse("e_pos@tc,:; e_tok@tc\n a0@tc + a0@: ; a1@: ; a0@tc -> a1.v@:", name="counting")
    assert [n.notation for n in c.nodes] == ["e_pos@tc,:", "e_tok@tc", "a0@tc", "a0@:", "a1@:"]
    assert [e.name for e in c.edges] == ["a0@tc -> a1.v@:"]
    text = str(c)
    assert text.startswith("counting: 5 nodes, 1 edges") and "hook_pos_embed" in text
    assert "Circuit('counting'" in repr(c)


def test_validate_against_model(tiny_model):
    n_heads = tiny_model.cfg.n_heads
    Node.parse(f"a1.{n_heads - 1}@3").validate(tiny_model)
    with pytest.raises(SiteError, match="out of range"):
        Node.parse(f"a1.{n_heads}@3").validate(tiny_model)
    with pytest.raises(SiteError, match="unknown hook"):
        Node.parse("a7").validate(tiny_model)
    c = Circuit(("a0.0", "m1"), ("a0.0 -> a1.1.k",)).validate(tiny_model)
    assert len(c.nodes) == 2 and len(c.edges) == 1


def test_resolve_position():
    tokens = torch.arange(24).reshape(2, 12) % 10
    assert resolve_position(tokens, 3).tolist() == [3, 3]
    assert resolve_position(tokens, -1).tolist() == [11, 11]
    with pytest.raises(PositionError, match="out of range"):
        resolve_position(tokens, 12)
    with pytest.raises(PositionError, match="no task"):
        resolve_position(tokens, "tc")
    names = {"first_zero": lambda t: (t == 0).int().argmax(-1)}
    assert resolve_position(tokens, "first_zero", names).tolist() == [0, 8]
    with pytest.raises(PositionError, match="first_zero"):
        resolve_position(tokens, "tc", names)
    with pytest.raises(PositionError, match="outside"):
        resolve_position(tokens, "bad", {"bad": lambda t: torch.full((2,), 40)})


def test_resolve_counting_positions_relative_to_eos():
    task = make_task()
    toks = task.encode(["aab|a:2", "abcabcab|c:2"])
    assert resolve_position(toks, "tc", task).tolist() == [5, 10]
    assert resolve_position(toks, ":", task).tolist() == [6, 11]
    with pytest.raises(PositionError, match="named positions"):
        resolve_position(toks, "query", task)
