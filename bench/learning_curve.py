"""Where does more data stop paying? `tunesmith curve` on real data, with default settings.

Trains the embedded model on nested subsets of a shared data set's train.jsonl (same seed), evaluates each on
its test split, and writes the points, their paired gains and the curve's verdict:

    .venv/bin/python bench/learning_curve.py [--sizes 50,100,200,400,800] [--out DIR]   # the "learning-curve" section
    .venv/bin/python bench/learning_curve.py --set sentiment --sizes 25,50,100,200   # "learning-curve-sentiment-small"
    .venv/bin/python bench/learning_curve.py --set chat --sizes 25,50,100,200 --test-limit 150   # "...-chat-small"

Needs ../shared/data. The HTML report goes to --out (default /tmp/tunesmith-learning-curve), not into the
project: it quotes the data set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import SHARED, machine, table, use_shared_data, without_error_lines, write_section  # noqa: E402

SETS = {"sentiment": "sentiment-movie", "chat": "chat-corpus"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="sentiment")
    parser.add_argument("--sizes", default="50,100,200,400,800")
    parser.add_argument("--test-limit", type=int, help="the first N test examples (generation is slow: chat)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-learning-curve")
    args = parser.parse_args()
    data = SHARED / SETS[args.set]
    use_shared_data(data, args.out)
    small = args.sizes.split(",")[-1] != "800"
    section = "learning-curve" if args.set == "sentiment" and not small else f"learning-curve-{args.set}-small"

    import tunesmith
    from tunesmith.evaluation.compare import format_gain, format_value, format_versus
    from tunesmith.evaluation.report import curve_verdict, write_curve_report
    from tunesmith.evaluation.systems import display_name

    sizes = [int(size) for size in args.sizes.split(",")]
    train, dropped_train = without_error_lines(data / "train.jsonl", args.out)
    test, dropped_test = without_error_lines(data / "test.jsonl", args.out)
    if args.test_limit:
        lines = test.read_text().splitlines(keepends=True)[: args.test_limit]
        test = args.out / f"test-{args.test_limit}.jsonl"
        test.write_text("".join(lines))
    dropped = "".join(
        f" Lines the data check refuses were left out of {name}: {', '.join(map(str, lines))}."
        for name, lines in (("train.jsonl", dropped_train), ("test.jsonl", dropped_test))
        if lines
    )
    curve = tunesmith.learning_curve(train, test, sizes, name=args.set)
    write_curve_report(curve, args.out / "curve.html")
    points = curve["points"]
    metric = curve["metric"]
    rows = [
        [
            p["n"],
            format_value(metric, p["value"]),
            f"{format_value(metric, p['interval'][0])} – {format_value(metric, p['interval'][1])}",
            format_gain(p, points[i - 1] if i else None),
            format_versus(p, "base"),
            format_versus(p, "few_shot"),
            f"{p['train_seconds']:.0f} s",
        ]
        for i, p in enumerate(points)
    ]
    rows += [
        [display_name(system, curve["shots"]), format_value(metric, value), "", "", "", "", ""]
        for system, value in curve["baselines"].items()
    ]
    header = ["training examples", metric, "95% interval", "gain on the previous size", "vs base zero-shot"]
    header += [f"vs base {curve['shots']}-shot", "training time"]
    what = "reviews" if args.set == "sentiment" else "conversations"
    tested = f"the first {args.test_limit} lines of" if args.test_limit else "all of"
    write_section(
        section,
        f"""
## Learning curve on real data: {args.set} (`bench/learning_curve.py`)

Command: `python bench/learning_curve.py {" ".join(sys.argv[1:])}` · embedded smollm2-135m, default
settings for each subset (data-chosen), nested subsets of {SETS[args.set]}'s train.jsonl (seed {curve["seed"]}), each
evaluated on {tested} its test.jsonl ({what}) · {machine()} · one run,
{curve["seconds"] / 60:.0f} min in all. Differences are paired over the same test examples, with 95% intervals
(in points for rates).{dropped}

{table(header, rows)}

Verdict (`tunesmith curve` prints it, the report's headline): {curve_verdict(curve)}
""",
    )
    print(curve_verdict(curve))


if __name__ == "__main__":
    main()
