"""CONEC-LoRA (Paeedeh et al., arXiv 2510.16077) for domain-incremental plant-disease diagnosis:
shared LoRAs in early blocks trained under distillation, one frozen LoRA set per domain in late
blocks, a domain selector routing each image in one forward pass.

`layer` holds the maths on one Linear, `selector` the domain selectors, `model` the wiring.
"""

from .layer import (
    ConecError,
    DomainLoRALinear,
    DomainRouting,
    LoRAPair,
    SharedLoRALinear,
)
from .model import (
    ConecHeads,
    ConecState,
    apply_conec,
    boundary_features,
    conec_logits,
    conec_state_dict,
    distillation_loss,
    load_conec_state_dict,
    shared_parameters,
    snapshot_shared,
    start_domain,
    teacher_logits,
    trainable_parameters,
)
from .selector import (
    SELECTORS,
    DomainSelector,
    GaussianDomainStats,
    LinearDomainSelector,
    MahalanobisDomainSelector,
    build_selector,
    unit_features,
)

__all__ = [
    "SELECTORS",
    "ConecError",
    "ConecHeads",
    "ConecState",
    "DomainLoRALinear",
    "DomainRouting",
    "DomainSelector",
    "GaussianDomainStats",
    "LinearDomainSelector",
    "LoRAPair",
    "MahalanobisDomainSelector",
    "SharedLoRALinear",
    "apply_conec",
    "boundary_features",
    "build_selector",
    "conec_logits",
    "conec_state_dict",
    "distillation_loss",
    "load_conec_state_dict",
    "shared_parameters",
    "snapshot_shared",
    "start_domain",
    "teacher_logits",
    "trainable_parameters",
    "unit_features",
]
