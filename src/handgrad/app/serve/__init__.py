"""``handgrad serve``: the browser lab (draw, train live, compare runs) and its JSON API.

``app`` (the Starlette app and its routes), ``lab`` (a drawing's probabilities, layers and
saliency through the model's own backward), ``drawing`` (a request's drawing to the model's
input), ``runs`` (the runs folder, safely), ``trainer`` and ``worker`` (training in a separate
process, streamed), ``static/`` (the pages). Needs the ``serve`` extra (starlette, uvicorn);
importing this package alone does not.
"""
