"""What each `tunesmith` command does: call one function of the Python API (tunesmith.api) and print its
result. The API holds the logic; these only turn flags into arguments and results into text and an exit
code (0 done, 1 failed, 130 interrupted)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from rich.text import Text

from tunesmith import api
from tunesmith.cli import launch
from tunesmith.cli.config_flags import config_values
from tunesmith.cli.console import err, out
from tunesmith.cli.tables import bases_table, curve_table, export_usage, models_table, parity_table, print_data_report
from tunesmith.core.errors import ExportParityError, TunesmithError
from tunesmith.evaluation.compare import comparison_table, eval_verdict
from tunesmith.evaluation.report import curve_verdict
from tunesmith.feedback.corrections import summary


def data_check(args: argparse.Namespace) -> int:
    report = api.check_data(args.file, args.task, args.base, args.max_length, args.val)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_data_report(report, out)
    return 0 if report.ok else 1


def data_generate(args: argparse.Namespace) -> int:
    result = api.distill(
        args.inputs,
        args.out,
        args.teacher_url,
        args.teacher_model,
        task=args.task,
        labels=args.labels,
        system=args.system,
        concurrency=args.concurrency,
        api_key=args.api_key,
        max_tokens=args.max_tokens,
        retries=args.retries,
        timeout=args.timeout,
    )
    for line in result.lines():
        err.print(line, highlight=False, markup=False)
    if result.error:
        err.print(f"error: {result.error}", highlight=False, markup=False)
    return 130 if result.interrupted else 0 if result.complete else 1


def data_from_corrections(args: argparse.Namespace) -> int:
    result, written = api.data_from_corrections(args.file, args.out)
    for issue in result.issues:
        err.print(Text(str(issue), style="yellow"))
    for line in summary(result, written, args.out):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


def train(args: argparse.Namespace) -> int:
    world = os.environ.get("WORLD_SIZE")  # set in each of torchrun's processes
    if args.nproc is not None and world is not None and int(world) != args.nproc:
        raise TunesmithError(f"--nproc {args.nproc} under torchrun's {world} processes: give one or the other")
    if world is None and (args.nproc not in (None, 1) or args.nnodes not in (None, 1) or args.rdzv_endpoint):
        nproc, nnodes = (1 if given is None else given for given in (args.nproc, args.nnodes))
        return launch.relaunch(args.argv, nproc, nnodes, args.rdzv_endpoint, args.join_timeout)
    result = api.train(args.config, resume=args.resume, fsdp=args.fsdp, **config_values(args, api.TrainConfig))
    return 130 if result.loop.interrupted else 0


def evaluate(args: argparse.Namespace) -> int:
    figures = api.evaluate(
        args.model,
        args.data,
        args.baselines,
        args.shots,
        args.report,
        shots_from=args.shots_from,
        prices=args.prices,
        teacher_url=args.teacher_url,
        teacher_model=args.teacher_model,
        teacher_api_key=args.teacher_api_key,
        teacher_parameters=args.teacher_parameters,
        json_path=args.json,
        latency_samples=args.latency_samples,
        max_new_tokens=args.max_new_tokens,
        precision=args.precision,
    )
    title = f"{figures.model} on {args.data} ({figures.n} examples)"
    out.print(comparison_table(figures.task, figures["results"], title))
    for line in eval_verdict(figures):
        out.print(line, soft_wrap=True)
    _saved(args.report)
    return 0


def curve(args: argparse.Namespace) -> int:
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        raise TunesmithError(
            f"--sizes {args.sizes!r}: give whole numbers separated by commas, e.g. 50,100,200"
        ) from None
    result = api.learning_curve(
        args.file,
        args.test,
        sizes,
        args.config,
        args.name,
        base=args.base,
        seed=args.seed,
        report=args.report,
        json_path=args.json,
        shots=args.shots,
        latency_samples=args.latency_samples,
    )
    out.print(curve_table(result))
    verdict = curve_verdict(result)
    if verdict:
        out.print(verdict, soft_wrap=True, markup=False)
    _saved(args.report)
    return 0


def generate(args: argparse.Namespace) -> int:
    print(api.generate(args.model, args.prompt, args.max_tokens, args.temperature, args.precision))
    return 0


def chat(args: argparse.Namespace) -> int:
    session = api.chat(args.model, args.max_tokens, args.temperature, args.precision)
    err.print(
        f"Chatting with {session.loaded.ref} ({session.loaded.task}). Empty line or Ctrl-D to quit, /reset to clear.",
        markup=False,
    )
    printer = session.printer()
    while True:
        try:
            prompt = input("> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        if prompt == "/reset":
            session.reset()
        else:
            session.say(prompt, printer)
    return 0


def review(args: argparse.Namespace) -> int:
    return api.review(args.model, args.prompts, args.out, args.max_tokens, console=out)


def models_list(args: argparse.Namespace) -> int:
    rows = api.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        out.print(models_table(rows))
    else:
        out.print("The registry is empty: train a model with `tunesmith train FILE`.")
    return 0


def models_show(args: argparse.Namespace) -> int:
    manifest = api.get_model(args.name)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        out.print_json(json.dumps(manifest))
    return 0


def models_rm(args: argparse.Namespace) -> int:
    for ref in api.remove_model(args.name, force=args.force):
        out.print(f"removed {ref}")
    return 0


def models_export(args: argparse.Namespace) -> int:
    try:
        result = api.export_model(
            args.name,
            args.format,
            args.out,
            args.dtype,
            args.gguf_type,
            args.with_base,
            check=not args.no_check,
            say=lambda line: err.print(line, markup=False, highlight=False),
        )
    except ExportParityError as failed:
        for report in failed.reports:
            out.print(parity_table(report))
        raise
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for report in (result.parity, result.llama_cpp):
        if report is not None:
            out.print(parity_table(report))
    for note in result.notes:
        out.print(note, markup=False, highlight=False)
    out.print(f"exported {result.ref} to {result.out} ({result.bytes / 1e6:,.0f} MB)", markup=False)
    for line in export_usage(result):
        out.print(line, markup=False, highlight=False)
    return 0


def base_list(args: argparse.Namespace) -> int:
    rows = api.list_bases()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        out.print(bases_table(rows))
    return 0


def serve(args: argparse.Namespace) -> int:
    api.run_server(
        args.host,
        args.port,
        args.api_key,
        args.max_upload_mb,
        args.model_memory_gb,
        args.precision,
        worker=not args.no_worker,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )
    return 0


def _saved(report: Path | None) -> None:
    if report:
        err.print(f"report: {report}", markup=False, highlight=False)


# The parser names each command (cli.parser: the `command` default); this is its handler.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data check": data_check,
    "data generate": data_generate,
    "data from-corrections": data_from_corrections,
    "train": train,
    "eval": evaluate,
    "curve": curve,
    "generate": generate,
    "chat": chat,
    "review": review,
    "models list": models_list,
    "models show": models_show,
    "models rm": models_rm,
    "models export": models_export,
    "base list": base_list,
    "serve": serve,
}
