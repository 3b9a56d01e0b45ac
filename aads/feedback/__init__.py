"""Curation of captured unknowns into the next training task (issue 18, item 5).

- `clusters`: group unknowns on the adapter's features (Ward linkage, k by silhouette);
- `sheets`: one contact sheet (PNG grid of thumbnails) per cluster;
- `labelstudio`: the labelling project: config XML, import tasks with predictions, and the
  reading of Label Studio's JSON export;
- `review`: ``aads feedback review``: the above for a crop's window of captures;
- `batch`: ``aads feedback import``: labels (a Label Studio export, or folders a person
  renamed) into data batches with their `aads.tasks.TaskSpec`.
"""
