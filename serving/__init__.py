"""KServe model servers of AADS: the router transformer and the crop adapter predictors.

Thin shells over `aads.inference` (image checks, model sources, diagnosis) and `aads.router`:
each class is a `kserve.Model` whose hooks parse the protocol (V1 or V2), call `aads`, and
shape the answer; typed errors map to HTTP codes in KServe's one place (``InvalidInput`` ->
400, ``ModelNotFound`` -> 404).
"""
