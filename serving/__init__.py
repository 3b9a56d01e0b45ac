"""KServe model servers of AADS: the router transformer and the crop adapter predictors.

Thin shells over `aads.inference` (image checks, model sources, diagnosis) and `aads.router`:
each class is a `kserve.Model` whose hooks parse the protocol (V1 or V2), call `aads`, and
shape the answer; typed errors map to HTTP codes in KServe's one place (``InvalidInput`` ->
400, ``ModelNotFound`` -> 404).
"""

import os

# Per-request OOD scoring is small numpy BLAS work right after a torch forward pass; with
# OpenBLAS's own thread pool on the same cores the two spin against each other (measured on
# 2 cores: batch-1 diagnosis 128 ms -> 54 ms with one BLAS thread). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
