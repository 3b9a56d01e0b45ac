"""SD-LoRA (Wu et al., ICLR 2025): class-incremental phase 2 as normalised low-rank directions
with learnable magnitudes. PEFT has no SD-LoRA, so it is ours: `layer` holds the maths on one
`nn.Linear`, `model` wires it into a backbone (lifecycle, state dict, merge).

Typical use, per task::

    targets = resolve_lora_targets(backbone, resolve_blocks("all", depth), settings.modules)
    apply_sd_lora(backbone.model, targets)            # once
    start_task(backbone.model, settings, task_index)  # new pair per layer
    optimizer = torch.optim.AdamW([*trainable_parameters(backbone.model), *head.parameters()])
    ...train...
    finish_task(backbone.model, settings)             # -KD folds, if configured
    save_file(sd_lora_state_dict(backbone.model), path)
"""

from .layer import SDLoRAError, SDLoRALinear
from .model import (
    apply_sd_lora,
    finish_task,
    load_sd_lora_state_dict,
    merge_sd_lora,
    rank_for_task,
    sd_lora_layers,
    sd_lora_state_dict,
    start_task,
    trainable_parameters,
)

__all__ = [
    "SDLoRAError",
    "SDLoRALinear",
    "apply_sd_lora",
    "finish_task",
    "load_sd_lora_state_dict",
    "merge_sd_lora",
    "rank_for_task",
    "sd_lora_layers",
    "sd_lora_state_dict",
    "start_task",
    "trainable_parameters",
]
