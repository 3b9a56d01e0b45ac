"""Capture of what the servers were asked: the images answered ``unknown`` (and a hash-chosen
sample of the others) with their answers, written to the object store for drift monitoring
and for curating the next training task.

- `settings`: `CaptureSettings`, the spec's ``serving.capture`` section;
- `records`: the layout in the store (``<prefix>/<crop>/<date>/<sha256>.{jpg,json}``), the
  `CaptureRecord` written beside each image, which answers are kept, and reading them back;
- `images`: re-encoding an upload as pixels only (EXIF and GPS gone, orientation applied);
- `writer`: `CaptureWriter`, the non-blocking, bounded, asynchronous writer the router calls;
- `slot`: `CaptureSlot`, the router's one writer kept in step with a reloaded spec;
- `features`: the adapter's features of captured images (drift and review).

This package's ``__init__`` imports nothing: `aads.config` imports `aads.capture.settings`,
and a config must stay loadable without the store client or torch being imported.
"""
