"""The Space's work, as plain functions that ``app.py`` wires to Gradio and the tests call directly.

- ``loading``: load the model and read what the page needs from it (``ModelState``, ``LoadedModel``);
- ``inputs``: per-request caps and readable checks of what a request sends;
- ``pictures``: tensors to displayable images, and uploads to the model's x_0;
- ``streaming``: run a pipeline in a worker thread and stream its steps;
- ``generate``, ``forward``, ``likelihood``, ``editing``: one module per tab.

Every module imports only its siblings, gradio, torch, numpy, PIL, pandas and (where present) hf_ddpm,
so the folder works beside ``app.py`` on a Space as well as inside a source checkout.
"""
