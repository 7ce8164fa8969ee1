"""The names in an export folder, ``<experiment>/export/<arm_id>/`` by default: one weights file and
``config.json``. A leaf without torch, so the command line can offer the formats without importing it."""

from __future__ import annotations

EXPORT_DIR = "export"  # <experiment>/export/<arm_id>/: the default destination
CONFIG_FILE = "config.json"
FORMATS = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
