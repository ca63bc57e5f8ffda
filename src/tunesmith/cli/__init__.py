"""The one command-line entry point. Thin: parse flags -> typed config -> call the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunesmith.core.errors import DataError, TunesmithError

out = Console()
err = Console(stderr=True, soft_wrap=True)  # long paths and commands stay on one line


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except DataError as problem:
        if problem.report is not None and getattr(args, "json", False) is True:
            print(json.dumps(problem.report.to_json(), indent=2))
        err.print(f"[red]error:[/] {escape(str(problem))}", highlight=False)
        return 1
    except TunesmithError as problem:
        err.print(f"error: {problem}", highlight=False, markup=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def _precision_option(parser: argparse.ArgumentParser, training: bool = False) -> None:
    default = (
        "bf16 on a GPU with bf16 or a CPU with AMX or AVX512-BF16, else fp32"
        if training
        else "bf16 on a GPU with bf16, else fp32; on a CPU with AMX, bf16 makes eval faster but moves scores slightly"
    )
    # train leaves it unset (None) so a config file's value stands; the others use it as given
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None if training else "auto",
        help=f"compute precision (default auto: {default})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description=(
            "Fine-tune small language models on your own data, on your own machine, and prove that it helped."
        ),
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    data = commands.add_parser("data", help="work with data files").add_subparsers(metavar="SUBCOMMAND")
    check = data.add_parser("check", help="check a data file: errors, warnings, token statistics")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--task", default="auto", choices=["auto", "chat", "completion", "text", "classify", "preference"]
    )
    check.add_argument("--base", default="smollm2-135m", help="base model whose tokenizer and template to use")
    check.add_argument("--max-length", type=int, help="tokens per example (default: from the data)")
    check.add_argument("--val", type=Path, help="validation file to check with it (overlap, labels)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=cmd_data_check)
    distill = data.add_parser(
        "generate",
        help="distillation: a teacher model behind any OpenAI-compatible URL "
        "labels or answers your inputs, making a training file",
        description="Asks the teacher (POST URL/chat/completions, temperature 0) about every "
        "input and appends the valid answers to OUT as training lines. An answer that is not one "
        "of --labels (classify), or is empty or cut off (chat), goes to OUT's .rejected.jsonl "
        "file instead, never guessed. A rerun skips the inputs already in either file.",
    )
    distill.add_argument(
        "--teacher-url",
        required=True,
        metavar="URL",
        help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1 (tunesmith serve)",
    )
    distill.add_argument("--teacher-model", required=True, metavar="NAME", help="model id the server offers")
    distill.add_argument(
        "--inputs",
        type=Path,
        required=True,
        metavar="FILE",
        help='JSONL: classify {"text": ...} (a label already there is ignored); chat {"prompt": ...} '
        'or {"messages": [...]} ending with a user turn',
    )
    distill.add_argument("--out", type=Path, required=True, metavar="FILE", help="training file to append to")
    distill.add_argument(
        "--task",
        choices=["classify", "chat"],
        help="classify: the teacher picks one of --labels; chat: it answers (default: classify when "
        "--labels is given, else chat)",
    )
    distill.add_argument("--labels", help="comma-separated label set, e.g. positive,negative")
    distill.add_argument(
        "--system",
        metavar="PROMPT",
        help="system message sent before each input (chat outputs keep it; classify outputs are text and label only)",
    )
    distill.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    distill.add_argument("--api-key", help="Bearer key for the teacher (default: $OPENAI_API_KEY)")
    distill.add_argument("--max-tokens", type=int, help="answer cap (default 32 for classify, 512 for chat)")
    distill.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries on connection errors, timeouts, 429 and 5xx, with back-off (default 5)",
    )
    distill.add_argument("--timeout", type=float, default=120, help="seconds per request (default 120)")
    distill.set_defaults(handler=cmd_data_generate)
    corrections = data.add_parser(
        "from-corrections",
        help="turn reviewed answers into training data: DIR/sft.jsonl and preference pairs DIR/pairs.jsonl",
    )
    corrections.add_argument(
        "file",
        type=Path,
        help="corrections JSONL (what `tunesmith review` writes): "
        '{"prompt" or "messages", "response", "verdict": "good" or "bad", "correction"}',
    )
    corrections.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the outputs")
    corrections.set_defaults(handler=cmd_data_from_corrections)

    train = commands.add_parser("train", help="fine-tune a base model on a data file")
    train.add_argument("file", type=Path, nargs="?", help="training data (.jsonl, .csv, .txt)")
    train.add_argument("--task", choices=["auto", "chat", "completion", "text", "classify", "preference"])
    train.add_argument(
        "--base",
        metavar="MODEL_OR_FINE_TUNE",
        help="what to start from: a base model name or local folder (default smollm2-135m), or "
        "a registry fine-tune NAME[:VERSION] to build on (recorded as lineage)",
    )
    train.add_argument(
        "--method",
        choices=["lora", "full", "dpo"],
        help="lora (default), full, or dpo: preference pairs {prompt, chosen, rejected}, "
        "trained as LoRA with the adapter-off model as reference",
    )
    train.add_argument("--beta", type=float, help="DPO strength of the pull to the reference (default 0.1)")
    train.add_argument("--name", help="registry name (default: the file name)")
    train.add_argument("--val", type=Path, help="validation file (default: hold out 10%%)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--max-length", type=int)
    train.add_argument("--lora-rank", type=int)
    _precision_option(train, training=True)
    train.add_argument("--seed", type=int)
    train.add_argument("-c", "--config", type=Path, help="YAML config; flags override its keys")
    train.add_argument("--resume", metavar="NAME", help="continue an interrupted run")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "eval", help="measure a model on held-out data against the base model zero-shot and with a few-shot prompt"
    )
    evaluate.add_argument("model", help="registry model (NAME or NAME:VERSION), base name or folder")
    evaluate.add_argument("--data", type=Path, required=True, help="held-out test file")
    evaluate.add_argument(
        "--baselines", default="base,few-shot", help="comma-separated: base, few-shot, or none (default: base,few-shot)"
    )
    evaluate.add_argument("--shots", type=int, default=8, help="examples in the few-shot prompt (default 8)")
    evaluate.add_argument(
        "--shots-from",
        type=Path,
        metavar="FILE",
        help="draw the shots from FILE (default: the examples kept with the version)",
    )
    evaluate.add_argument(
        "--latency-samples", type=int, default=16, help="single requests timed per system (default 16; 0 skips latency)"
    )
    evaluate.add_argument(
        "--max-new-tokens", type=int, help="generation cap for chat/completion (default: 1.5x the longest reference)"
    )
    evaluate.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="YAML/JSON price overrides for break-even (cpu_core_hour_usd, gpu_hour_usd)",
    )
    _precision_option(evaluate)
    evaluate.add_argument("--json", type=Path, metavar="OUT", help="write every figure as JSON")
    evaluate.add_argument("--report", type=Path, metavar="OUT.html", help="write a self-contained HTML report")
    evaluate.add_argument(
        "--teacher-url",
        metavar="URL",
        help="also measure a teacher behind this OpenAI-compatible "
        "URL (e.g. http://127.0.0.1:8000/v1) on the same examples, as a reference",
    )
    evaluate.add_argument("--teacher-model", metavar="NAME", help="the teacher's model id (with --teacher-url)")
    evaluate.add_argument(
        "--teacher-api-key", metavar="KEY", help="Bearer key for the teacher (default: $OPENAI_API_KEY)"
    )
    evaluate.add_argument(
        "--teacher-parameters",
        metavar="N",
        help="the teacher's size for the table, e.g. 1.7B (default: unknown, shown as –)",
    )
    evaluate.set_defaults(handler=cmd_eval)

    curve = commands.add_parser("curve", help="learning curve: train on nested subsets, evaluate each")
    curve.add_argument("file", type=Path, help="training data")
    curve.add_argument("--test", type=Path, required=True, help="held-out test file")
    curve.add_argument("--sizes", default="50,100,200,400", help="comma-separated subset sizes")
    curve.add_argument("--base", help="base model name or local folder (default smollm2-135m)")
    curve.add_argument("--name", help="registry name prefix (default: FILE-curve; models are NAME-nSIZE)")
    curve.add_argument("--shots", type=int, default=8, help="examples in the few-shot reference line")
    curve.add_argument("--latency-samples", type=int, default=16, help="single requests timed per system")
    curve.add_argument("--seed", type=int, default=0)
    curve.add_argument("-c", "--config", type=Path, help="YAML training config for every size")
    curve.add_argument("--json", type=Path, metavar="OUT", help="write the points as JSON")
    curve.add_argument("--report", type=Path, metavar="OUT.html", help="write a self-contained HTML report")
    curve.set_defaults(handler=cmd_curve)

    generate = commands.add_parser("generate", help="answer one prompt")
    generate.add_argument("model", help="registry model (NAME or NAME:VERSION), base name or folder")
    generate.add_argument("prompt")
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)
    _precision_option(generate)
    generate.set_defaults(handler=cmd_generate)

    chat = commands.add_parser("chat", help="talk to a model interactively")
    chat.add_argument("model")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)
    _precision_option(chat)
    chat.set_defaults(handler=cmd_chat)

    from tunesmith.feedback.terminal import HELP as REVIEW_KEYS

    review = commands.add_parser(
        "review",
        help="judge a model's answers one by one; bad ones get a correction",
        epilog=REVIEW_KEYS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    review.add_argument("model", help="registry model (NAME or NAME:VERSION), base name or folder")
    review.add_argument(
        "--prompts",
        type=Path,
        required=True,
        metavar="FILE",
        help='JSONL, one {"prompt": "..."} or {"messages": [...]} (ending with a user turn) a line',
    )
    review.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="CORRECTIONS.jsonl",
        help="where verdicts are appended (read back to resume)",
    )
    review.add_argument("--max-tokens", type=int, default=256, help="answer length cap (default 256)")
    review.set_defaults(handler=cmd_review)

    models = commands.add_parser("models", help="the registry of fine-tuned models").add_subparsers(
        metavar="SUBCOMMAND"
    )
    listing = models.add_parser("list", help="all versions")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_models_list)
    show = models.add_parser("show", help="one version's manifest")
    show.add_argument("name", help="NAME (latest) or NAME:VERSION")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_models_show)
    remove = models.add_parser("rm", help="delete NAME (all versions) or NAME:VERSION")
    remove.add_argument("name")
    remove.add_argument(
        "--force",
        action="store_true",
        help="remove it even if other versions are built on it (a full fine-tune they start from)",
    )
    remove.set_defaults(handler=cmd_models_rm)

    serve = commands.add_parser(
        "serve", help="OpenAI-compatible API: chat with models, upload files, run fine-tuning jobs"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address needs an API key)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` on every /v1 call (default: $TUNESMITH_API_KEY)"
    )
    serve.add_argument("--max-upload-mb", type=float, default=100, help="largest accepted upload (default 100)")
    serve.add_argument(
        "--model-memory-gb",
        type=float,
        default=3,
        help="memory for loaded models; the least recently used is evicted beyond it (default 3)",
    )
    _precision_option(serve)
    serve.add_argument(
        "--no-worker", action="store_true", help="serve only: queue fine-tuning jobs without running them here"
    )
    serve.set_defaults(handler=cmd_serve)

    base = commands.add_parser("base", help="base models").add_subparsers(metavar="SUBCOMMAND")
    base_list = base.add_parser("list", help="base models and whether they are available")
    base_list.add_argument("--json", action="store_true")
    base_list.set_defaults(handler=cmd_base_list)
    return parser


def cmd_data_check(args) -> int:
    from tunesmith.api import check_data
    from tunesmith.cli.tables import print_data_report

    report = check_data(args.file, args.task, args.base, args.max_length, args.val)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_data_report(report, out)
    return 0 if report.ok else 1


def cmd_data_from_corrections(args) -> int:
    from rich.text import Text

    from tunesmith.feedback.corrections import convert, summary, write_outputs

    result = convert(args.file)
    for issue in result.issues:
        err.print(Text(str(issue), style="red" if issue.severity == "error" else "yellow"))
    if result.errors:
        err.print(f"{len(result.errors)} error(s): nothing written", highlight=False)
        return 1
    if not result.sft:
        raise TunesmithError(
            f"{args.file}: every review is in a conflict, nothing left to write; resolve the conflicts listed above"
        )
    for line in summary(result, write_outputs(result, args.out), args.out):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


def cmd_data_generate(args) -> int:
    import os

    from tunesmith.models.openai_client import Teacher
    from tunesmith.workflows.distill import distill

    task = args.task or ("classify" if args.labels else "chat")
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    teacher = Teacher(
        args.teacher_url,
        args.teacher_model,
        args.api_key or os.environ.get("OPENAI_API_KEY") or None,
        max_tokens=args.max_tokens or (32 if task == "classify" else 512),
        retries=args.retries,
        timeout=args.timeout,
    )
    summary = distill(args.inputs, args.out, teacher, task, labels, args.system, args.concurrency, console=err)
    for line in summary.lines():
        err.print(line, highlight=False, markup=False)
    if summary.error:
        err.print(f"error: {summary.error}", highlight=False, markup=False)
    return 130 if summary.interrupted else 0 if summary.complete else 1


def cmd_train(args) -> int:
    from tunesmith.core.config import load_config
    from tunesmith.workflows.train import train

    if args.resume:
        result = train(resume=args.resume)
    else:
        if args.file is None and args.config is None:
            raise TunesmithError("give a training file (or a config with `data:`), or --resume NAME")
        config = load_config(
            args.config,
            data=args.file,
            task=args.task,
            base=args.base,
            method=args.method,
            name=args.name,
            val_data=args.val,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            max_length=args.max_length,
            lora_rank=args.lora_rank,
            seed=args.seed,
            precision=args.precision,
            beta=args.beta,
        )
        result = train(config)
    return 130 if result.loop.interrupted else 0


def cmd_eval(args) -> int:
    from tunesmith.evaluation.compare import comparison_table
    from tunesmith.evaluation.measure import EvalOptions
    from tunesmith.evaluation.report import write_eval_report
    from tunesmith.evaluation.scores import load_prices
    from tunesmith.workflows.evaluate import evaluate

    baselines = tuple(b.strip().replace("-", "_") for b in args.baselines.split(",") if b.strip() != "none")
    options = EvalOptions(
        shots=args.shots,
        latency_samples=args.latency_samples,
        max_new_tokens=args.max_new_tokens,
        precision=args.precision,
    )
    prices = load_prices(args.prices) if args.prices else None
    teacher, size = _eval_teacher(args)
    figures = evaluate(
        args.model,
        args.data,
        baselines,
        options,
        args.shots_from,
        prices,
        console=err,
        teacher=teacher,
        teacher_parameters=size,
    )
    out.print(
        comparison_table(
            figures["task"], figures["results"], f"{figures['model']} on {args.data} ({figures['n']} examples)"
        )
    )
    print_verdict(figures)
    _save(figures, args.json, args.report, write_eval_report)
    return 0


def _eval_teacher(args):
    """(the teacher of --teacher-url, its --teacher-parameters) or (None, None)."""
    import os

    from tunesmith.evaluation.teacher import parse_parameters
    from tunesmith.models.openai_client import Teacher

    if not args.teacher_url and not args.teacher_model:
        return None, None
    if not (args.teacher_url and args.teacher_model):
        raise TunesmithError("--teacher-url and --teacher-model go together: the API's base URL and the model id")
    key = args.teacher_api_key or os.environ.get("OPENAI_API_KEY") or None
    size = parse_parameters(args.teacher_parameters) if args.teacher_parameters else None
    return Teacher(args.teacher_url, args.teacher_model, key), size


def print_verdict(figures: dict) -> None:
    from tunesmith.evaluation.compare import verdict

    for line in verdict(figures["task"], figures["results"], figures["helped"], figures.get("significance") or {}):
        out.print(line, soft_wrap=True)
    even = figures.get("break_even")
    if even:
        if even["requests"] is None:
            out.print(
                "break-even: never; the fine-tuned model is not cheaper per request than the few-shot prompt",
                soft_wrap=True,
            )
        else:
            out.print(
                f"break-even: training ({even['training_cpu_seconds']:.0f} CPU-s, "
                f"${even['training_cost_usd']:.4f}) is paid back by the shorter prompt after "
                f"{even['requests']:,} requests ({even['saved_cpu_seconds_per_request']:.3f} CPU-s saved each)",
                soft_wrap=True,
            )
    if figures.get("diffs_total"):
        out.print(
            f"{figures['diffs_total']} differences from a baseline, {figures['regressions_total']} of them "
            "regressions (see --report or --json)",
            soft_wrap=True,
        )


def cmd_curve(args) -> int:
    from tunesmith.core.config import load_config
    from tunesmith.evaluation.measure import EvalOptions
    from tunesmith.evaluation.report import curve_verdict, write_curve_report
    from tunesmith.workflows.curve import curve_table, learning_curve

    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        raise TunesmithError(
            f"--sizes {args.sizes!r}: give whole numbers separated by commas, e.g. 50,100,200"
        ) from None
    config = load_config(args.config, data=args.file, base=args.base, seed=args.seed)
    curve = learning_curve(
        args.file,
        args.test,
        sizes,
        config,
        args.name,
        EvalOptions(shots=args.shots, seed=args.seed, latency_samples=args.latency_samples),
        console=err,
    )
    out.print(curve_table(curve))
    verdict = curve_verdict(curve)
    if verdict:
        out.print(verdict, soft_wrap=True, markup=False)
    _save(curve, args.json, args.report, write_curve_report)
    return 0


def _save(figures: dict, json_path: Path | None, report_path: Path | None, write_report) -> None:
    """--json (written atomically) and --report."""
    from tunesmith.core.durable import atomic_write_text

    if json_path:
        atomic_write_text(json_path, json.dumps(figures, indent=2))
    if report_path:
        write_report(figures, report_path)
        err.print(f"report: {report_path}")


def cmd_generate(args) -> int:
    from tunesmith.inference.loaded import generate_answer, load

    loaded = load(args.model, precision=args.precision)
    print(generate_answer(loaded, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature))
    return 0


def cmd_chat(args) -> int:
    from transformers import TextStreamer

    from tunesmith.inference.loaded import generate_answer, load

    loaded = load(args.model, precision=args.precision)
    err.print(f"Chatting with {loaded.ref} ({loaded.task}). Empty line or Ctrl-D to quit, /reset to clear.")
    history: list[dict] = []
    streamer = TextStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            prompt = input("> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        if prompt == "/reset":
            history = []
            continue
        messages = loaded.messages_for(prompt, history)
        answer = generate_answer(
            loaded, messages=messages, max_tokens=args.max_tokens, temperature=args.temperature, streamer=streamer
        )
        if loaded.task != "classify":  # a classifier answers each text on its own
            history = [*messages[1 if loaded.system_prompt else 0 :], {"role": "assistant", "content": answer}]
    return 0


def cmd_review(args) -> int:
    import shlex

    from tunesmith.feedback.session import ReviewSession
    from tunesmith.feedback.terminal import review_in_terminal

    session = ReviewSession(args.prompts, args.out)  # file errors stop here, before a model is loaded
    resume = shlex.join(
        [
            "tunesmith",
            "review",
            args.model,
            "--prompts",
            str(args.prompts),
            "--out",
            str(args.out),
            *(["--max-tokens", str(args.max_tokens)] if args.max_tokens != 256 else []),
        ]
    )
    return review_in_terminal(session, args.model, args.max_tokens, resume, out)


def cmd_serve(args) -> int:
    import os

    from tunesmith.serve.app import ServeSettings
    from tunesmith.serve.server import serve

    settings = ServeSettings(
        api_key=args.api_key or os.environ.get("TUNESMITH_API_KEY") or None,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        model_memory_bytes=int(args.model_memory_gb * 2**30),
        precision=args.precision,
    )
    serve(args.host, args.port, settings, worker_enabled=not args.no_worker)
    return 0


def cmd_models_list(args) -> int:
    from tunesmith.cli.tables import models_table
    from tunesmith.registry import store

    rows = [version.summary() for version in store.list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        out.print(models_table(rows))
    else:
        out.print("The registry is empty: train a model with `tunesmith train FILE`.")
    return 0


def cmd_models_show(args) -> int:
    from tunesmith.registry import store

    version = store.get(args.name)
    manifest = version.manifest | {"path": str(version.path)}
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        out.print_json(json.dumps(manifest))
    return 0


def cmd_models_rm(args) -> int:
    from tunesmith.registry import store

    for version in store.remove(args.name, force=args.force):
        out.print(f"removed {version.ref}")
    return 0


def cmd_base_list(args) -> int:
    from rich.table import Table

    from tunesmith.models.base import list_bases

    rows = list_bases()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table()
    for column in ("name", "available", "path", "description"):
        table.add_column(column)
    for row in rows:
        available = "yes" if row["available"] else f"no: {row['install']}"
        table.add_row(
            row["name"], available, row["path"] if row["converted"] else "(converted on first use)", row["description"]
        )
    out.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
