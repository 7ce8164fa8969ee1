"""Taking a trained arm out of an experiment and using it: ``ferbench export`` and ``ferbench predict``.

- ``formats``: the file names an export folder holds (no torch: the CLI's parser reads them);
- ``arm``: one arm of an experiment as a model, with the weights its test scores are of and how its
  trial fed it images;
- ``preprocess``: image files to the tensor the trial's test step fed the model (the same reading,
  colour mode, resizing, channels and normalisation);
- ``writer``: an arm written as ``model.safetensors`` | ``model.onnx`` | ``model.pt`` (TorchScript) plus
  ``config.json``, atomically;
- ``predict``: an exported folder loaded back and run on image files.

Why a room of its own: exporting reads an experiment (study) and runs a model (train) on images read
as the datasets read them (data); the report layer only names the default arm (``ferbench.reports``,
reached from the CLI's ``main``). Nothing is imported here, so that naming a submodule does not import torch.
"""
