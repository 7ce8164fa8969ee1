"""The spec of a decision tree of CNNs (section ``trees``), trained by a grid arm named ``tree:<name>``.

Each node is a network of its own: its backbone, its ``model`` and ``train`` settings (written over the study's,
e.g. its number of blocks and its augmentation, Table 5.3 of the Moravčík thesis) and optionally its own training
variant (the thesis balances NN1's training data between its two sides). The structure (which node splits what,
the root, the children) is ``ferbench.backbones.tree``'s; the trial is ``ferbench.harness.train.tree_trial``.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field, field_validator

from ferbench.backbones.tree import ROUTINGS, Routing, TreeLayout, tree_layout
from ferbench.harness import variants
from ferbench.harness.strict_model import StrictModel

TREE_PREFIX = "tree:"


def is_tree(backbone: str) -> bool:
    return str(backbone).startswith(TREE_PREFIX)


def tree_name(backbone: str) -> str:
    return str(backbone)[len(TREE_PREFIX):]


class TreeNodeSpec(StrictModel):
    name: str = Field(description="the node's name (its rows in the epochs table, its line in the report)")
    groups: list[list[str]] = Field(
        min_length=2, description="the class groups the node tells apart; a group of several classes is split by the "
        "node whose groups hold exactly those classes")
    backbone: str = Field("moravcik_final", description="the node's network (any registered backbone, not a tree)")
    model: dict[str, Any] = Field(default_factory=dict, description="model.* settings of this node over the study's "
                                  "(e.g. moravcik_blocks: 3)")
    train: dict[str, Any] = Field(default_factory=dict, description="train.* settings of this node over the study's "
                                  "(e.g. epochs, augment: {rotation_deg: 10, shear_deg: 0})")
    variant: str | None = Field(None, description="the node's training variant (baseline, balanced); default: the arm's")

    @field_validator("backbone")
    @classmethod
    def _plain_backbone(cls, name: str) -> str:
        from ferbench.backbones import is_known_backbone

        if is_tree(name):
            raise ValueError(f"a node's backbone is a network; {name} is a tree (a group is split by a node of this tree)")
        if not is_known_backbone(name):
            raise ValueError(f"unknown backbone {name!r}; `ferbench backbones` lists them")
        return name

    @field_validator("variant")
    @classmethod
    def _node_variant(cls, value: str | None) -> str | None:
        if value is not None:
            names = {info.name for info in variants.parse_combination(value)}
            if names - {"baseline", "balanced"}:
                raise ValueError(f"a node trains as baseline or balanced, not {value}")
        return value


class TreeSpec(StrictModel):
    description: str = Field("", description="what the tree is (shown in the report)")
    routing: Routing = Field("hard", description=f"{' or '.join(ROUTINGS)}: hard follows the most probable group at each "
                             "node (the thesis); soft multiplies the group probabilities along each class's path")
    nodes: list[TreeNodeSpec] = Field(min_length=1)

    def layout(self, where: str = "nodes") -> TreeLayout:
        return tree_layout([(node.name, node.groups) for node in self.nodes], where)


def node_spec_data(spec_data: dict, node: TreeNodeSpec, arm_variant: str) -> dict:
    """The study's spec (``model_dump(mode="json")``) as one node trains with it: the node's ``model`` and ``train``
    settings written over the study's, its backbone and variant the grid's only arm (no extra axes, no exclude
    rules), no trees."""
    data = copy.deepcopy(spec_data)
    for section in ("model", "train"):
        _merge(data.setdefault(section, {}), getattr(node, section))
    data["trees"] = {}
    data["grid"] = {"backbone": [node.backbone], "init": ["random"], "variant": [node.variant or arm_variant],
                    "seed": data["grid"]["seed"][:1], "exclude": []}  # the study's exclude rules are about its arms
    return data


def _merge(target: dict, settings: dict) -> None:
    """``settings`` written into ``target``, nested dicts merged (``augment: {shear_deg: 10}`` keeps the other keys);
    dotted keys (``augment.shear_deg``) are read as nested."""
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if rest:
            _merge(target.setdefault(head, {}), {rest: value})
        elif isinstance(value, dict) and isinstance(target.get(head), dict):
            _merge(target[head], value)
        else:
            target[head] = value
