"""The diagnostic scouting stage: field photos that show several plants or organs.

One image goes through four stages, each a module with one job:

1. detect regions (`detection`: Grounding DINO with open-vocabulary part prompts, or
   `vegetation`: a classical ExG + Otsu proposal stage used when no detector checkpoint is
   configured),
2. segment each box (`segmentation`: SAM-2 with box prompts, a mask per region),
3. diagnose each masked crop with the existing crop router + that crop's adapter (`diagnosis`),
4. cross-check each region zero-shot with BioCLIP 2 (`bioclip`, `prompts`),

and `scouting` orchestrates them into one answer per image (`response`). Model sources are
strings as for the backbone (Hugging Face id, local dir, ``s3://``, ``random:<preset>``;
`presets` builds the random ones in code, `synthetic` draws field images for tests/demos).

This package's ``__init__`` imports nothing: `aads.config` imports `aads.vlm.settings`, and a
config must stay loadable without torch or transformers being imported.
"""
