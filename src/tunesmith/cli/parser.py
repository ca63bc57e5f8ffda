"""The flags of every `tunesmith` command. Building the parser imports no model code (no torch): `--help`
and a mistyped flag answer at once. Each command's ``command`` default names its handler in cli.commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunesmith.cli import launch
from tunesmith.cli.config_flags import add_config_flags
from tunesmith.core.config import EXPORT_DTYPES, EXPORT_FORMATS, GGUF_TYPES, PRECISIONS, TASK_CHOICES, TrainConfig

DESCRIPTION = "Fine-tune small language models on your own data, on your own machine, and prove that it helped."
MODEL_HELP = "registry model (NAME or NAME:VERSION), base model name or local folder"
PRECISION_HELP = (
    "compute precision (default auto: bf16 on a GPU with bf16, else fp32; on a CPU with AMX, bf16 makes "
    "eval faster but moves scores slightly)"
)
TEACHER_KEY_HELP = "Bearer key for the teacher (default: $OPENAI_API_KEY)"
REVIEW_KEYS = """keys, each followed by Enter:
  g  good: the answer is right as it is
  b  bad: type the right answer (the correction); end a line with \\ to continue it on the next
     line, an empty correction is asked again
  s  skip: record nothing; the prompt is asked again next time
  q  quit (as does Ctrl-D); Ctrl-C also stops, with every recorded review kept
Every verdict is appended to the --out file at once. Run the same command again to resume:
prompts that already have a line there are skipped. Then: tunesmith data from-corrections."""
TRAIN_EPILOG = """Each setting is a field of TrainConfig: the same name is a key of the --config YAML file (lora_rank
for --lora-rank), a keyword of tunesmith.train() and a hyperparameter of a `tunesmith serve` fine-tuning
job. A flag overrides the config file; a setting given nowhere takes its default, and one without a
default (epochs, lr, max_length, lora_rank, ...) is chosen from the data (README: Training)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunesmith", description=DESCRIPTION)
    parser.set_defaults(command=None, parser=parser)  # a command group without its subcommand prints its help
    commands = parser.add_subparsers(metavar="COMMAND")
    _data_commands(_group(commands, "data", "work with data files"))
    _train_command(commands)
    _eval_command(commands)
    _curve_command(commands)
    _use_commands(commands)
    _review_command(commands)
    _models_commands(_group(commands, "models", "the registry of fine-tuned models"))
    _serve_command(commands)
    base = _group(commands, "base", "base models")
    listing = _command(base, "base list", "list", help="base models and whether they are available")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    return parser


def _group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    group = commands.add_parser(name, help=help)
    group.set_defaults(command=None, parser=group)
    return group.add_subparsers(metavar="SUBCOMMAND")


def _command(commands: argparse._SubParsersAction, command: str, name: str, **options) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, **options)
    parser.set_defaults(command=command)
    return parser


def _precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)


def _data_commands(data: argparse._SubParsersAction) -> None:
    check = _command(data, "data check", "check", help="check a data file: errors, warnings, token statistics")
    check.add_argument("file", type=Path, help="training data (.jsonl, .json array, .csv or .txt)")
    check.add_argument("--task", default="auto", choices=TASK_CHOICES, help="data format (default: detected)")
    check.add_argument("--base", default="smollm2-135m", help="base model whose tokenizer and template to use")
    check.add_argument("--max-length", type=int, metavar="N", help="tokens per example (default: from the data)")
    check.add_argument("--val", type=Path, metavar="FILE", help="validation file to check with it (overlap, labels)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    distill = _command(
        data,
        "data generate",
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
    distill.add_argument("--labels", metavar="A,B,...", help="comma-separated label set, e.g. positive,negative")
    distill.add_argument(
        "--system",
        metavar="PROMPT",
        help="system message sent before each input (chat outputs keep it; classify outputs are text and label only)",
    )
    distill.add_argument("--concurrency", type=int, default=8, metavar="N", help="requests in flight (default 8)")
    distill.add_argument("--api-key", metavar="KEY", help=TEACHER_KEY_HELP)
    distill.add_argument(
        "--max-tokens", type=int, metavar="N", help="answer cap (default 32 for classify, 512 for chat)"
    )
    distill.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries on connection errors, timeouts, 429 and 5xx, with back-off (default 5)",
    )
    distill.add_argument("--timeout", type=float, default=120, metavar="S", help="seconds per request (default 120)")

    corrections = _command(
        data,
        "data from-corrections",
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


def _train_command(commands: argparse._SubParsersAction) -> None:
    train = _command(
        commands,
        "train",
        "train",
        help="fine-tune a base model on a data file",
        description="Check the data, fine-tune, compare the result with the base model zero-shot and few-shot "
        "on the validation split, and publish it to the registry. Ctrl-C writes a checkpoint (--resume).",
        epilog=TRAIN_EPILOG,
    )
    settings = train.add_argument_group("settings")
    add_config_flags(settings, TrainConfig, positional="data", aliases={"val_data": ["--val", "--val-data"]})
    run = train.add_argument_group("config file, resume and processes")
    run.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML file of settings (field names as keys); flags override it",
    )
    run.add_argument("--resume", metavar="NAME", help="continue the interrupted run NAME with its saved settings")
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this machine (torchrun; one per GPU, or CPU processes "
        "over gloo): the update one process makes on the same batch (README: More than one process)",
    )
    run.add_argument(
        "--nnodes",
        type=int,
        metavar="M",
        help="with --nproc: over M machines, the same command on each (needs --rdzv-endpoint)",
    )
    run.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the machines' processes meet (torchrun's c10d rendezvous): one machine's address, the same "
        "on every machine",
    )
    run.add_argument(
        "--join-timeout",
        type=int,
        default=launch.JOIN_TIMEOUT,
        metavar="SECONDS",
        help="give up when not every machine has joined after this long (default %(default)s)",
    )
    run.add_argument(
        "--fsdp",
        action="store_true",
        help="the processes also split the weights, their gradients and the optimizer state (FSDP): for "
        "training that does not fit one device; LoRA and full fine-tuning (README: More than one process)",
    )


def _eval_command(commands: argparse._SubParsersAction) -> None:
    evaluate = _command(
        commands,
        "eval",
        "eval",
        help="measure a model on held-out data against the base model zero-shot and with a few-shot prompt",
    )
    evaluate.add_argument("model", help=MODEL_HELP)
    evaluate.add_argument("--data", type=Path, required=True, metavar="FILE", help="held-out test file")
    evaluate.add_argument(
        "--baselines",
        default="base,few-shot",
        metavar="LIST",
        help="comma-separated: base, few-shot, or none (default: base,few-shot)",
    )
    evaluate.add_argument(
        "--shots", type=int, default=8, metavar="K", help="examples in the few-shot prompt (default 8)"
    )
    evaluate.add_argument(
        "--shots-from",
        type=Path,
        metavar="FILE",
        help="draw the shots from FILE (default: the examples kept with the version)",
    )
    evaluate.add_argument(
        "--latency-samples",
        type=int,
        default=16,
        metavar="N",
        help="single requests timed per system (default 16; 0 skips latency)",
    )
    evaluate.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="generation cap for chat/completion (default: 1.5x the longest reference)",
    )
    evaluate.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="YAML/JSON price overrides for break-even (cpu_core_hour_usd, gpu_hour_usd)",
    )
    _precision(evaluate)
    evaluate.add_argument("--json", type=Path, metavar="OUT", help="write every figure as JSON")
    evaluate.add_argument("--report", type=Path, metavar="OUT.html", help="write a self-contained HTML report")
    evaluate.add_argument(
        "--teacher-url",
        metavar="URL",
        help="also measure a teacher behind this OpenAI-compatible "
        "URL (e.g. http://127.0.0.1:8000/v1) on the same examples, as a reference",
    )
    evaluate.add_argument("--teacher-model", metavar="NAME", help="the teacher's model id (with --teacher-url)")
    evaluate.add_argument("--teacher-api-key", metavar="KEY", help=TEACHER_KEY_HELP)
    evaluate.add_argument(
        "--teacher-parameters",
        metavar="N",
        help="the teacher's size for the table, e.g. 1.7B (default: unknown, shown as –)",
    )


def _curve_command(commands: argparse._SubParsersAction) -> None:
    curve = _command(commands, "curve", "curve", help="learning curve: train on nested subsets, evaluate each")
    curve.add_argument("file", type=Path, help="training data")
    curve.add_argument("--test", type=Path, required=True, metavar="FILE", help="held-out test file")
    curve.add_argument(
        "--sizes",
        default="50,100,200,400",
        metavar="LIST",
        help="comma-separated subset sizes (default 50,100,200,400)",
    )
    curve.add_argument("--base", help="base model name or local folder (default smollm2-135m)")
    curve.add_argument("--name", help="registry name prefix (default: FILE-curve; models are NAME-nSIZE)")
    curve.add_argument(
        "--shots", type=int, default=8, metavar="K", help="examples in the few-shot reference line (default 8)"
    )
    curve.add_argument(
        "--latency-samples", type=int, default=16, metavar="N", help="single requests timed per system (default 16)"
    )
    curve.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seeds the subsets, training and evaluation (default: the config's, else 0)",
    )
    curve.add_argument("-c", "--config", type=Path, metavar="FILE", help="YAML training settings for every size")
    curve.add_argument("--json", type=Path, metavar="OUT", help="write the points as JSON")
    curve.add_argument("--report", type=Path, metavar="OUT.html", help="write a self-contained HTML report")


def _use_commands(commands: argparse._SubParsersAction) -> None:
    generate = _command(commands, "generate", "generate", help="answer one prompt")
    generate.add_argument("model", help=MODEL_HELP)
    generate.add_argument("prompt", help="the user's message (a raw-text model continues it)")
    generate.add_argument("--max-tokens", type=int, default=128, metavar="N", help="answer length cap (default 128)")
    generate.add_argument("--temperature", type=float, default=0.0, metavar="X", help="0 is greedy (default 0)")
    _precision(generate)

    chat = _command(commands, "chat", "chat", help="talk to a model interactively")
    chat.add_argument("model", help=MODEL_HELP)
    chat.add_argument("--max-tokens", type=int, default=256, metavar="N", help="answer length cap (default 256)")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="X", help="0 is greedy (default 0)")
    _precision(chat)


def _review_command(commands: argparse._SubParsersAction) -> None:
    review = _command(
        commands,
        "review",
        "review",
        help="judge a model's answers one by one; bad ones get a correction",
        epilog=REVIEW_KEYS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    review.add_argument("model", help=MODEL_HELP)
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
    review.add_argument("--max-tokens", type=int, default=256, metavar="N", help="answer length cap (default 256)")


def _models_commands(models: argparse._SubParsersAction) -> None:
    listing = _command(models, "models list", "list", help="all versions")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    show = _command(models, "models show", "show", help="one version's manifest")
    show.add_argument("name", help="NAME (latest) or NAME:VERSION")
    show.add_argument("--json", action="store_true", help="print it as plain JSON")
    remove = _command(models, "models rm", "rm", help="delete NAME (all versions) or NAME:VERSION")
    remove.add_argument("name", help="NAME (every version) or NAME:VERSION")
    remove.add_argument(
        "--force",
        action="store_true",
        help="remove it even if other versions are built on it (a full fine-tune they start from)",
    )
    _export_command(models)


def _export_command(models: argparse._SubParsersAction) -> None:
    export = _command(
        models,
        "models export",
        "export",
        help="write a version for transformers/vLLM (hf), PEFT (peft) or llama.cpp/Ollama (gguf), checked",
        description="Write a version for other tools, load it back the way they do and check that it answers "
        "like the model (the parity check). Nothing is written if the check fails or anything goes wrong.",
    )
    export.add_argument("name", help="NAME (latest) or NAME:VERSION; also a base model name or folder (hf, gguf)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="hf, peft or gguf")
    export.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new (or empty) folder")
    export.add_argument(
        "--dtype", choices=EXPORT_DTYPES, default="fp32", help="hf: the weights' dtype (default fp32; merged in fp32)"
    )
    export.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        default="f16",
        help="gguf: the tensor type (default f16; norms stay f32). source: the types of the GGUF the base came "
        "from (the embedded model's 4-bit Q4_1), unchanged tensors copied byte for byte",
    )
    export.add_argument(
        "--with-base",
        action="store_true",
        help="peft: also write the exact base weights (with earlier fine-tunes merged) under DIR/base",
    )
    export.add_argument("--no-check", action="store_true", help="skip the parity check")
    export.add_argument("--json", action="store_true", help="print the result as JSON")


def _serve_command(commands: argparse._SubParsersAction) -> None:
    serve = _command(
        commands,
        "serve",
        "serve",
        help="OpenAI-compatible API: chat with models, upload files, run fine-tuning jobs",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address needs an API key)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        help="require `Authorization: Bearer KEY` on every /v1 call (default: $TUNESMITH_API_KEY)",
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=100, metavar="MB", help="largest accepted upload (default 100)"
    )
    serve.add_argument(
        "--model-memory-gb",
        type=float,
        default=3,
        metavar="GB",
        help="memory for loaded models; the least recently used is evicted beyond it (default 3)",
    )
    _precision(serve)
    serve.add_argument(
        "--max-batch",
        type=int,
        default=64,
        metavar="N",
        help="sequences decoded together; requests beyond it wait for a place (default 64)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="requests allowed to wait; more are refused with 429 and a Retry-After (default 256)",
    )
    serve.add_argument(
        "--no-worker", action="store_true", help="serve only: queue fine-tuning jobs without running them here"
    )
