"""A decision tree of CNNs (the Moravčík thesis, §5.3, Fig. 5.1): each node a network that splits its classes into
groups, each image routed from the root down to a class.

A tree is described by its nodes alone: a node names the class groups it tells apart; a group of one class is a
leaf, a group of several is the class set of exactly one other node (its child there). The root is the node whose
classes are every class of the tree. ``tree_layout`` checks a description and answers the structural questions
(root, children, the path to each class); ``CnnTree`` is the trained tree as one ``nn.Module`` whose forward returns
log-probabilities over the classes, so evaluation, reports and prediction treat it as any other model.

Routing:

- ``hard`` (the thesis): each image follows its most probable group at every node until a group is a single class.
  Its probabilities are those of the node that decided, over that node's single-class groups (renormalised; the
  groups it did not descend into get 0), so their argmax is the routed class.
- ``soft``: the probability of a class is the product of the probabilities of the groups on its path from the root
  (a proper distribution over all classes); the prediction is its argmax, which may differ from hard routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

ROUTINGS = ("hard", "soft")
Routing = Literal["hard", "soft"]


@dataclass(frozen=True)
class TreeNode:
    name: str
    groups: tuple[tuple[str, ...], ...]

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(c for group in self.groups for c in group)

    def group_names(self) -> tuple[str, ...]:
        """The names of the node's outputs: a group's classes joined by ``+`` (``angry+sad+neutral``)."""
        return tuple("+".join(group) for group in self.groups)


@dataclass(frozen=True)
class TreeLayout:
    """A checked tree: its nodes in the order given, the root, and each multi-class group's child node."""

    nodes: tuple[TreeNode, ...]
    root: str
    children: dict[tuple[str, int], str]  # (node, group index) → the child node; single-class groups are leaves

    @property
    def classes(self) -> frozenset[str]:
        return self.node(self.root).classes

    def node(self, name: str) -> TreeNode:
        return next(n for n in self.nodes if n.name == name)

    def paths(self) -> dict[str, list[tuple[str, int]]]:
        """Each class's path from the root: the (node, group index) pairs that lead to it."""
        found: dict[str, list[tuple[str, int]]] = {}

        def walk(name: str, prefix: list[tuple[str, int]]) -> None:
            for index, group in enumerate(self.node(name).groups):
                step = [*prefix, (name, index)]
                if (name, index) in self.children:
                    walk(self.children[(name, index)], step)
                else:
                    found[group[0]] = step

        walk(self.root, [])
        return found


def tree_layout(nodes: list[tuple[str, list[list[str]]]], where: str = "nodes") -> TreeLayout:
    """Check a tree given as (node name, its class groups) pairs; a ValueError lists every problem, one line each,
    naming ``where[i]`` and the fix."""
    problems: list[str] = []
    parsed = [TreeNode(name, tuple(tuple(group) for group in groups)) for name, groups in nodes]
    names = [node.name for node in parsed]
    for index, node in enumerate(parsed):
        at = f"{where}[{index}] ({node.name})"
        if names.count(node.name) > 1:
            problems.append(f"{at}: node name {node.name!r} is used {names.count(node.name)} times; give each node its own name")
        if len(node.groups) < 2:
            problems.append(f"{at}: a node splits its classes into at least 2 groups; it has {len(node.groups)}")
        if any(not group for group in node.groups):
            problems.append(f"{at}: a group is empty; each group names at least one class")
        classes = [c for group in node.groups for c in group]
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            problems.append(f"{at}: {', '.join(repeated)} stand{'s' if len(repeated) == 1 else ''} in more than one group; "
                            "the groups of a node are disjoint")
    if problems:
        raise ValueError("\n".join(problems))
    by_classes: dict[frozenset[str], str] = {}
    for index, node in enumerate(parsed):
        other = by_classes.setdefault(node.classes, node.name)
        if other != node.name:
            problems.append(f"{where}[{index}] ({node.name}): splits the same classes as {other}; a class set has one node")
    children: dict[tuple[str, int], str] = {}
    for index, node in enumerate(parsed):
        for g, group in enumerate(node.groups):
            if len(group) == 1:
                continue
            child = by_classes.get(frozenset(group))
            if child is None:
                problems.append(f"{where}[{index}] ({node.name}): group {'+'.join(group)} has no node that splits it; add a "
                                f"node whose groups hold exactly {', '.join(group)}, or split the group into single classes")
            else:
                children[(node.name, g)] = child
    reached = set(children.values())
    roots = [node.name for node in parsed if node.name not in reached]
    if len(roots) != 1:
        problems.append(f"{where}: a tree has one root (a node no group leads to); "
                        f"{'none' if not roots else ', '.join(roots)} found")
    if problems:
        raise ValueError("\n".join(problems))
    # Each child's classes are a strict subset of its parent's, so the walk from the root ends and reaches every node.
    return TreeLayout(nodes=tuple(parsed), root=roots[0], children=children)


def route(layout: TreeLayout, class_names: tuple[str, ...], node_probabilities: dict[str, torch.Tensor],
          routing: Routing = "hard") -> torch.Tensor:
    """Probabilities over ``class_names`` (N × C) from each node's group probabilities (N × its groups), as the module
    docstring defines them for ``routing``."""
    first = next(iter(node_probabilities.values()))
    n, device = first.shape[0], first.device
    column = {name: i for i, name in enumerate(class_names)}
    if routing == "soft":
        out = torch.ones(n, len(class_names), dtype=torch.float32, device=device)
        for name, path in layout.paths().items():
            for node, group in path:
                out[:, column[name]] *= node_probabilities[node][:, group].float()
        return out
    out = torch.zeros(n, len(class_names), dtype=torch.float32, device=device)
    names = [node.name for node in layout.nodes]
    at = torch.full((n,), names.index(layout.root), dtype=torch.long, device=device)
    pending = torch.ones(n, dtype=torch.bool, device=device)
    for _ in names:  # each step goes one level down; no path is longer than the number of nodes
        for number, node in enumerate(layout.nodes):
            rows = torch.nonzero(pending & (at == number)).flatten()
            if not len(rows):
                continue
            probabilities = node_probabilities[node.name][rows].float()
            child = torch.tensor([names.index(layout.children[(node.name, g)]) if (node.name, g) in layout.children else -1
                                  for g in range(len(node.groups))], device=device)
            chosen = child[probabilities.argmax(1)]
            descend = chosen >= 0
            at[rows[descend]] = chosen[descend]
            decided = rows[~descend]
            if not len(decided):
                continue
            leaves = [g for g, group in enumerate(node.groups) if len(group) == 1]
            kept = probabilities[~descend][:, leaves]
            kept = kept / kept.sum(1, keepdim=True).clamp_min(1e-12)
            columns = torch.tensor([column[node.groups[g][0]] for g in leaves], dtype=torch.long, device=device)
            out[decided.unsqueeze(1), columns.unsqueeze(0)] = kept
            pending[decided] = False
    return out


class CnnTree(nn.Module):
    """The trained tree: one network per node (``nodes[name]``, outputs = the node's groups), routed by ``route``.

    Every node sees every image of a batch (simple, and the price is the nodes' sum, paid at evaluation only);
    forward returns the log of ``route``'s probabilities, clamped at 1e-12, so ``softmax`` gives them back.
    """

    def __init__(self, layout: TreeLayout, class_names: tuple[str, ...], nodes: dict[str, nn.Module], routing: Routing):
        super().__init__()
        self.layout, self.class_names, self.routing = layout, tuple(class_names), routing
        self.nodes = nn.ModuleDict(nodes)

    def get_classifier(self) -> nn.Module:
        """The nodes' output layers (what a parameter count of the trunks leaves out)."""
        return nn.ModuleList(node.get_classifier() for node in self.nodes.values())

    def node_probabilities(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: torch.softmax(node(x).float(), dim=1) for name, node in self.nodes.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = route(self.layout, self.class_names, self.node_probabilities(x), self.routing)
        return probabilities.to(x.device).clamp_min(1e-12).log()
