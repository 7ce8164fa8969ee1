"""``ferbench backbones [--json] [--layers NAME]``: the registered backbones, and what trains in them
under the Smelyakov paper's reading.

The paper froze "all layers except the last 4" of Keras models after excluding their last layer;
which layers those are, and how many parameters they hold, is not visible from the PyTorch modules,
so this command shows the recorded Keras list (``ferbench.backbones.keras_layers``) next to the PyTorch
module each layer maps to. The reading (k, VGG-Face descriptor) is the ``smelyakov2022`` study's.
The table is counted and kept by ``backbones_table``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ferbench.harness.cli.backbones_table import PAPER_STUDY, compute_table, load_table, paper_reading

EXIT_OK, EXIT_USAGE = 0, 2


def add_backbones_parser(subparsers: Any) -> argparse.ArgumentParser:
    backbones = subparsers.add_parser("backbones", help="list the registered backbones")
    backbones.add_argument("--json", action="store_true", help="machine-readable output")
    backbones.add_argument("--layers", metavar="NAME",
                           help="print NAME's Keras layer list (as the paper counted layers) and which layers train")
    backbones.add_argument("--k", type=int, metavar="K", help=f"Keras layers that train (default: the {PAPER_STUDY} study's, 4)")
    backbones.add_argument("--vggface-descriptor", choices=("fc7", "fc8"),
                           help=f"VGG-Face's recorded list (default: the {PAPER_STUDY} study's, fc8)")
    return backbones


def layers_table(name: str, k: int, vggface_descriptor: str) -> str:
    """The recorded Keras list of ``name`` with, per layer, whether it trains under keras_last_k."""
    from ferbench.backbones.keras_layers import RECORDED_BACKBONES, keras_layer_list

    layers = keras_layer_list(name, vggface_descriptor)
    if layers is None:
        raise ValueError(f"--layers {name}: no recorded Keras layer list; recorded: {', '.join(RECORDED_BACKBONES)}")
    training = {layer.index for layer in layers.last_k(k)}
    lines = [f"{layers.source}; output {layers.output}; {layers.total_params:,} Keras params",
             f"{'#':>4}  {'name':<26}{'Keras class':<20}{'params':>12}  {'trains':<9}pytorch module"]
    for layer in layers.layers:
        state = "excluded" if layer.index == layers.layers[-1].index else "yes" if layer.index in training else "-"
        lines.append(f"{layer.index:>4}  {layer.name:<26}{layer.keras_class:<20}{layer.params:>12,}  {state:<9}{layer.torch or ''}".rstrip())
    lines.append(f"{len(layers.paper_layers)} layers after excluding the last one; the last {k} train: "
                 f"{layers.trainable_params(k):,} Keras parameters (+ the head)")
    return "\n".join(lines)


def cmd_backbones(args: argparse.Namespace) -> int:
    if args.layers:
        k, options = paper_reading()
        try:
            print(layers_table(args.layers, args.k if args.k is not None else k,
                               args.vggface_descriptor or options.vggface_descriptor))
        except ValueError as err:
            print(f"ferbench: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    table = load_table(compute_table)
    rows = table["rows"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max(len(row["name"]) for row in rows) + 2
    print(f"{'name':<{width}}{'family':<8}{'input':>6}{'embedding':>10}{'params':>13}{'keras_params':>14}"
          f"{'keras_layers':>13}{'paper_trains':>14}  description")
    for row in rows:
        layers = "–" if row["keras_layers"] is None else f"{row['keras_layers']}"
        trains = "–" if row["paper_trainable_params"] is None else f"{row['paper_trainable_params']:,}"
        print(f"{row['name']:<{width}}{row['family']:<8}{row['input_size']:>6}{row['embedding_dim']:>10}"
              f"{row['params']:>13,}{row['keras_params']:>14,}{layers:>13}{trains:>14}  {row['description']}")
    print("params / keras_params: without the classifier, as the papers count them (keras_params adds BatchNorm")
    print("moving statistics and the conv biases Keras' version has). keras_layers: Keras layers after excluding")
    print(f"the last one; paper_trains: the Keras parameters the last {table['k']} of them hold ({PAPER_STUDY}: VGG-Face")
    print("with fc8, as deepface in 2022); ferbench backbones --layers NAME lists them. Any timm model works as timm:<name>,")
    print("and any timm model on the Hugging Face Hub as timm:hf-hub:ORG/REPO.")
    return EXIT_OK
