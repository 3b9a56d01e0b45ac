"""KServe model servers of AADS: the router transformer, the crop adapter predictors and the
scouting service.

Thin shells over `aads` (uploads, model sources, diagnosis, the answer model): each is a
`serving.base.ServedModel` (a `kserve.Model` whose hooks parse V1 or V2, check every image in
its own error boundary, call `aads`, and answer in the caller's protocol), served by
`serving.server.ModelServer` (KServe's, with our host, routes, connection limits and the one
mapping of error kinds to HTTP statuses in `serving.routes`).
"""

import os

# Per-request OOD scoring is small numpy BLAS work right after a torch forward pass; with
# OpenBLAS's own thread pool on the same cores the two spin against each other (measured on
# 2 cores: batch-1 diagnosis 128 ms -> 54 ms with one BLAS thread). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
