"""What recording one answer's metrics costs on the request path (`aads.telemetry`).

Reproduce with ``.venv/bin/python benchmarks/telemetry.py [--quick]``; writes
``benchmarks/results/telemetry.json``.

Times each helper the servers call once per answer, request, stage or batch, on warm label
children (the first call of a label combination creates them; every later one is a dict
lookup), as the best and the median of `repeat` runs of `number` calls, in microseconds per
call. An answer is timed as the wire dict and, where `aads.answer` exists, as the `Answer`
model (read by attribute, never serialised). For scale: the in-process diagnosis of one image
is tens of milliseconds (`benchmarks/results/serving.md`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from pathlib import Path
from typing import Any

from machine import load_average, machine
from prometheus_client import CollectorRegistry

from aads.atomic import atomic_write_text
from aads.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def answers() -> dict[str, Any]:
    known = {
        "label": "early_blight",
        "is_ood": False,
        "confidence": 0.91,
        "crop": "tomato",
        "predicted_class": "early_blight",
        "top_k": [{"class": "early_blight", "probability": 0.91}],
        "ood": {"distance": 11.2, "threshold": 16.0, "nearest_class": "early_blight"},
        "model": {"name": "aads-adapter-tomato", "version": "7"},
        "routing": {"source": "router", "crop": "tomato", "crop_confidence": 0.97},
    }
    out: dict[str, Any] = {
        "known (dict)": known,
        "known, CONEC domain (dict)": {**known, "domain": "field"},
        "unknown (dict)": {**known, "label": "unknown", "is_ood": True},
        "not a known crop (dict)": {
            "label": "unknown",
            "is_ood": True,
            "confidence": 0.0,
            "crop": None,
            "ood": {"distance": 40.0, "threshold": 20.0, "nearest_class": "corn"},
            "routing": {"source": "router", "crop": "corn", "is_ood": True},
        },
        "error (dict)": {"crop": "tomato", "error": {"code": 503, "message": "unavailable"}},
    }
    try:
        from aads.answer import Answer
    except ImportError:
        return out
    out["known (Answer model)"] = Answer.model_validate(known)
    return out


def per_call_us(fn, number: int, repeat: int) -> dict[str, float]:  # noqa: ANN001
    times = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return {"best_us": round(min(times), 3), "median_us": round(statistics.median(times), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--out", type=Path, default=RESULTS / "telemetry.json")
    args = parser.parse_args(argv)
    number, repeat = (5_000, 5) if args.quick else (50_000, 7)
    t = Telemetry(CollectorRegistry())
    t.register_crops(["tomato", "corn"])
    t.register_model("tomato", "7", classes=["early_blight"], domains=["base", "field"])
    load_before = load_average()
    rows: dict[str, dict[str, float]] = {"empty call (baseline)": per_call_us(
        lambda: None, number, repeat
    )}  # fmt: skip
    for name, answer in answers().items():
        t.observe_answer(answer)  # warm: the label children exist from now on
        rows[f"observe_answer: {name}"] = per_call_us(
            lambda a=answer: t.observe_answer(a), number, repeat
        )

    def timed_stage() -> None:
        with t.stage_timer("predict", "tomato", "champion"):
            pass

    rows["stage_timer (enter + exit)"] = per_call_us(timed_stage, number, repeat)
    rows["observe_batch"] = per_call_us(lambda: t.observe_batch(8, "tomato", "7"), number, repeat)
    rows["observe_request"] = per_call_us(
        lambda: t.observe_request("v2", 200, 0.08), number, repeat
    )
    result = {
        "benchmark": "telemetry",
        "machine": machine(),
        "load_average_1m_before": load_before,
        "load_average_1m_after": load_average(),
        "calls_per_run": number,
        "runs": repeat,
        "per_call": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    width = max(map(len, rows))
    for name, row in rows.items():
        print(f"{name:<{width}}  best {row['best_us']:7.2f} us  median {row['median_us']:7.2f} us")


if __name__ == "__main__":
    main()
