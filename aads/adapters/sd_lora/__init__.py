"""SD-LoRA (Wu et al., ICLR 2025): class-incremental phase 2 as normalised low-rank directions
with learnable magnitudes. PEFT has no SD-LoRA, so it is ours, laid out as PEFT's tuners:
`config` holds the settings (``adapter.sd_lora``), `layer` the maths on one `nn.Linear`,
`model` the wiring into a backbone (lifecycle, state dict, merge).

Typical use (`model.SDLoRA` has the verbs of `aads.adapters.method.ContinualMethod`, which
`train_task` runs for phase 2)::

    targets = resolve_lora_targets(backbone, resolve_blocks("all", depth), settings.modules)
    apply_sd_lora(backbone.model, targets)            # once
    method = SDLoRA(backbone.model, settings)
    method.start_task(task_index)                     # per task: a new pair per layer
    optimizer = torch.optim.AdamW([*method.trainable_parameters(), *head.parameters()])
    ...train...
    method.finish_task()                              # -KD folds, if configured
    save_file(sd_lora_state_dict(backbone.model), path)

This package's ``__init__`` imports nothing: `aads.config` imports `config`, and a spec must
stay loadable without torch being imported. Import from the modules.
"""
