"""THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms, and the THREAD response.
Pure: the session finds the messages (with the SEARCH keys that follow the algorithm) and hands
over SORT's facts; subjects and sent dates are read as SORT reads its SUBJECT and DATE keys
(`sort.sort_key`), the Message-ID, References and In-Reply-To fields from the same message view.

Choices where the RFC leaves room: Message-IDs compare as octets; an id is `<…@…>` with no
space inside; equal sent dates keep sequence order (§2.2). Trees are walked without recursion:
a reply chain may be thousands of messages deep.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .sort import SortFacts, reduce_subject, sort_key
from .syntax import Atom, Token

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_MSG_ID = re.compile(r"<\s*([^<>\s@]+@[^<>\s]+?)\s*>")


@dataclass(frozen=True)
class ThreadRequest:
    algorithm: str
    search: tuple[Token, ...]  # CHARSET name key…, for search.parse_search


def parse_thread(args: Sequence[Token]) -> ThreadRequest:
    """algorithm charset key… ; ValueError when malformed or the algorithm is not ours."""
    if len(args) < 3 or not isinstance(args[0], Atom):
        raise ValueError("THREAD takes an algorithm, a charset and search keys")
    algorithm = args[0].value.upper()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown threading algorithm {algorithm[:30]}")
    return ThreadRequest(algorithm, (Atom("CHARSET"), *args[1:]))


@dataclass(eq=False)
class Node:
    """A message of a thread, or a dummy (`facts` None): one referred to that is not here."""

    facts: SortFacts | None
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None


def thread(algorithm: str, found: Sequence[SortFacts]) -> list[Node]:
    """The threads of the messages found, in the order the THREAD response gives them."""
    return (_references if algorithm == "REFERENCES" else _ordered_subject)(sorted(found, key=lambda f: f.seq))


def _sent(node: Node) -> tuple:
    """Siblings' order (§2.2): sent date, then sequence; a dummy sorts as its first child."""
    while node.facts is None:
        node = node.children[0]
    return sort_key("DATE", node.facts), node.facts.seq


def _subject(node: Node) -> tuple[str, bool]:
    """(base subject as SORT compares it, reply or forward) of a node or a dummy's first child."""
    while node.facts is None:
        node = node.children[0]
    raw = (node.facts.message.header_values("subject") or [""])[0]
    return sort_key("SUBJECT", node.facts), reduce_subject(raw)[1]


def _ordered_subject(found: list[SortFacts]) -> list[Node]:
    """§3 ORDEREDSUBJECT: messages grouped by base subject; the earliest sent of each group is
    the parent of the others, in sent order; threads in their parent's sent order."""
    groups: dict[str, Node] = {}
    for f in sorted(found, key=lambda f: (sort_key("SUBJECT", f), sort_key("DATE", f), f.seq)):
        key = sort_key("SUBJECT", f)
        if key in groups:
            groups[key].children.append(Node(f, parent=groups[key]))
        else:
            groups[key] = Node(f)
    return sorted(groups.values(), key=_sent)


def _ids(values: list[str]) -> list[str]:
    return _MSG_ID.findall(" ".join(values))


def _is_ancestor(node: Node, of: Node) -> bool:
    """Is `node` `of` itself or one of its ancestors (a link of=>node… would make a loop)?"""
    walk: Node | None = of
    while walk is not None:
        if walk is node:
            return True
        walk = walk.parent
    return False


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    assert child.parent is not None
    child.parent.children.remove(child)
    child.parent = None


def _references(found: list[SortFacts]) -> list[Node]:
    """§3 REFERENCES, steps 1 to 7."""
    by_id: dict[str, Node] = {}
    nodes: list[Node] = []
    for f in found:  # step 1, in sequence order: a duplicate Message-ID counts as none
        own = _ids(f.message.header_values("message-id"))[:1]
        if own and own[0] in by_id and by_id[own[0]].facts is None:
            node = by_id[own[0]]
            node.facts = f
        else:
            node = Node(f)
            nodes.append(node)
            if own and own[0] not in by_id:
                by_id[own[0]] = node
        refs = _ids(f.message.header_values("references")) or _ids(f.message.header_values("in-reply-to"))[:1]
        chain = []
        for ref in refs:
            if ref not in by_id:
                by_id[ref] = Node(None)
                nodes.append(by_id[ref])
            chain.append(by_id[ref])
        for parent, child in zip(chain, chain[1:]):  # 1A: keep the links already made
            if child.parent is None and not _is_ancestor(child, parent):
                _link(parent, child)
        if node.parent is not None:  # 1B: the last reference is the parent, if no loop
            _unlink(node)
        if chain and not _is_ancestor(node, chain[-1]):
            _link(chain[-1], node)
    roots = _sort_all(_prune([n for n in nodes if n.parent is None]))  # steps 2 to 5
    return _sort_all(_merge_subjects(roots))  # steps 6 and 7


def _walk(roots: list[Node]) -> Iterator[Node]:
    """Every node, each after its descendants (post-order)."""
    stack = [(n, False) for n in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
        else:
            stack.append((node, True))
            stack += [(c, False) for c in reversed(node.children)]


def _prune(roots: list[Node]) -> list[Node]:
    """Step 4: a dummy without children goes; one with children gives them to its parent, but
    at the top only when it has a single child."""
    for node in _walk(roots):
        kept: list[Node] = []
        for child in node.children:
            kept += child.children if child.facts is None else [child]
        for child in kept:
            child.parent = node
        node.children = kept
    top: list[Node] = []
    for node in roots:
        if node.facts is not None or len(node.children) > 1:
            top.append(node)
        elif node.children:
            node.children[0].parent = None
            top.append(node.children[0])
    return top


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 6: top-level threads with the same base subject are joined."""
    table: dict[str, Node] = {}
    for node in roots:  # 6B
        key, refwd = _subject(node)
        if not key:
            continue
        held = table.get(key)
        if held is None or held.facts is not None and (node.facts is None or _subject(held)[1] and not refwd):
            table[key] = node
    merged: list[Node | None] = list(roots)
    place = {n: i for i, n in enumerate(roots)}
    for node in roots:  # 6C
        key, refwd = _subject(node)
        held = table.get(key) if key else None
        if held is None or held is node or node.parent is not None:  # a parent: under a new dummy
            continue
        merged[place[node]] = None
        if held.facts is None and node.facts is None:
            for child in list(node.children):
                _link(held, child)
        elif held.facts is None or refwd and not _subject(held)[1]:
            _link(held, node)
        else:
            dummy = Node(None)
            merged[place[held]] = dummy
            place[dummy] = place[held]
            _link(dummy, held)
            _link(dummy, node)
            table[key] = dummy
    return [n for n in merged if n is not None]


def _sort_all(roots: list[Node]) -> list[Node]:
    """Steps 5 and 7: every set of siblings in sent order, children before their parents (a
    dummy sorts as its first child)."""
    for node in _walk(roots):
        node.children.sort(key=_sent)
    return sorted(roots, key=_sent)


def render(threads: list[Node], number: Callable[[SortFacts], int]) -> bytes:
    """The THREAD response (§4): `(1 2 (3)(4 5))`, a dummy being its children's lists."""
    out: list[str] = ["* THREAD "]
    stack: list[Node | str] = [x for t in reversed(threads) for x in (")", t, "(")]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        words = []
        while True:
            if item.facts is not None:
                words.append(str(number(item.facts)))
            if len(item.children) != 1:
                break
            item = item.children[0]
        out.append(" ".join(words) + (" " if words and item.children else ""))
        stack += [x for c in reversed(item.children) for x in (")", c, "(")]
    return "".join(out).rstrip().encode() + b"\r\n"
