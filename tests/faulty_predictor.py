"""A real predictor process with one injected bug, for the tests of what a 500 does: a request
carrying a PNG text chunk ``aads-fault`` makes `answer` raise, as a programming error would.

    python -m tests.faulty_predictor --adapter tomato=DIR --spec spec.yaml --http_port N
"""

from __future__ import annotations

import argparse

from aads.answer import Answer
from serving.base import Batch
from serving.predictor import AdapterPredictor
from serving.server import ModelServer, server_arguments

MARKER = b"aads-fault"


class FaultyPredictor(AdapterPredictor):
    async def answer(self, batch: Batch, headers: dict[str, str]) -> list[Answer]:
        if any(MARKER in batch.instances[i].image for i in batch.ready):
            raise RuntimeError("injected bug: " + "x" * 10_000)  # must never reach the caller
        return await super().answer(batch, headers)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[server_arguments()])
    parser.add_argument("--adapter", required=True, help="crop=folder")
    args = parser.parse_args()
    crop, folder = args.adapter.split("=", 1)
    server = ModelServer.from_args(args)
    model = FaultyPredictor(crop, folder, server.spec)
    model.load()
    server.start([model])


if __name__ == "__main__":
    main()
