"""Where does more data stop paying? `tunesmith curve` on real data, with default settings.

Trains the embedded model on nested subsets of sentiment-movie's train.jsonl (same seed), evaluates each on
the 500 test reviews, and writes the points, their paired gains and the curve's verdict:

    .venv/bin/python bench/learning_curve.py [--sizes 50,100,200,400,800] [--out DIR]   # the "learning-curve" section

Needs ../shared/data. The HTML report goes to --out (default /tmp/tunesmith-learning-curve), not into the
project: it quotes the data set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import SHARED, machine, table, use_shared_data, write_section  # noqa: E402

DATA = SHARED / "sentiment-movie"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200,400,800")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-learning-curve")
    args = parser.parse_args()
    use_shared_data(DATA, args.out)

    import tunesmith
    from tunesmith.evaluation.compare import format_gain
    from tunesmith.evaluation.report import curve_verdict, write_curve_report
    from tunesmith.evaluation.systems import display_name

    sizes = [int(size) for size in args.sizes.split(",")]
    curve = tunesmith.learning_curve(DATA / "train.jsonl", DATA / "test.jsonl", sizes, name="sentiment")
    write_curve_report(curve, args.out / "curve.html")
    points = curve["points"]
    rows = [
        [
            p["n"],
            f"{p['value']:.1%}",
            f"{p['interval'][0]:.1%} – {p['interval'][1]:.1%}",
            format_gain(p, points[i - 1] if i else None),
            f"{p['train_seconds']:.0f} s",
        ]
        for i, p in enumerate(points)
    ]
    rows += [
        [display_name(system, curve["shots"]), f"{value:.1%}", "", "", ""]
        for system, value in curve["baselines"].items()
    ]
    write_section(
        "learning-curve",
        f"""
## Learning curve on real data (`bench/learning_curve.py`)

Command: `python bench/learning_curve.py --sizes {args.sizes}` · embedded smollm2-135m, default settings for each
subset (data-chosen), nested subsets of sentiment-movie's train.jsonl (seed {curve["seed"]}), each evaluated on the
500 test reviews · {machine()} · one run, {curve["seconds"] / 60:.0f} min in all.

{
            table(
                [
                    "training examples",
                    "accuracy",
                    "95% interval",
                    "gain on the previous size (points, 95% interval)",
                    "training time",
                ],
                rows,
            )
        }

Verdict (`tunesmith curve` prints it, the report's headline): {curve_verdict(curve)}
""",
    )
    print(curve_verdict(curve))


if __name__ == "__main__":
    main()
