"""Shared fixtures. Unit tests use a tiny Llama and a tiny BPE tokenizer built in-process (no
downloads, a second to make); integration tests use the real embedded model, converted once per
session into a cache shared by every test's throw-away TUNESMITH_HOME."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The Ctrl-C tests play a user at a terminal. A suite started as a background job of a script
# (`nohup make test &`, some CI runners) starts with SIGINT ignored, Python then leaves it ignored, and
# every command the tests start inherits that: the CLI would rightly ignore the test's Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Classify the text as one of: negative, positive.",
    "Answer with the label only. Text: the soup was great and the staff were kind.",
    "system user assistant You are a helpful assistant. Hello! How are you today?",
    "Summarise the call. Customer: CU-1234 Product: FBX-200 Issue: no signal. 0123456789",
]


def call_rows(n: int = 24) -> list[dict]:
    """``n`` short support-call conversations labelled negative / positive in turn: chat data for tiny-model runs."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"Customer: CU-{1000 + i} Issue: no signal."},
                {"role": "assistant", "content": "positive" if i % 2 else "negative"},
            ]
        }
        for i in range(n)
    ]


def build_tiny_model(folder: Path, tie: bool = True) -> Path:
    """A 2-layer Llama (hidden 32, 4 heads over 2 KV heads) with a 400-token byte-level BPE and a ChatML
    template; ``tie``: the output head shares the embedding."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_lora(model, rank: int, scale: float, seed: int):
    """``model`` wrapped with a PEFT LoRA adapter on every linear layer whose B is random (PEFT starts it at
    zero), so that the adapter changes the model's answers."""
    import torch

    from tunesmith.models.load import add_lora

    torch.manual_seed(seed)
    wrapped = add_lora(model, rank, 2 * rank, 0.0, "all-linear")
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, scale)
    return wrapped


def sharpen(model) -> None:
    """Re-initialise at O(1) scale so attention and next-token distributions are far from uniform:
    a token attended to by mistake (or a wrong position id) then moves the scores a lot."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                continue
            if parameter.dim() == 2 and "embed" in name:
                parameter.normal_(0.0, 1.0)
            elif parameter.dim() == 2:
                parameter.normal_(0.0, 1.5 / math.sqrt(parameter.shape[1]))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny-model tests: on tiny matrices one thread is faster than two that wait on each
    other (and on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["matmul", "sdpa-fp32"])
def attention_path(request, monkeypatch) -> str:
    """The CPU training attention (training.kernels) on both its paths: each test using it runs with
    short rows taking the matmul path, then with every row over the size limit, so SDPA in fp32 (the
    path for long rows) is checked the same way."""
    from tunesmith.training import kernels

    if request.param == "sdpa-fp32":
        monkeypatch.setattr(kernels, "MATMUL_ATTENTION_MAX_SCORES", 0)
    return request.param


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh TUNESMITH_HOME per test; the base-model cache is shared across the session."""
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNESMITH_CACHE", str(REPO / ".cache" / "tunesmith"))
    return tmp_path / "home"


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl("name.jsonl", [obj or raw str, ...]) -> path"""

    def write(name: str, rows: list) -> Path:
        path = tmp_path / name
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
        return path

    return write


def pytest_collection_modifyitems(config, items):
    # Each integration module also says which of model / server / shared_data it is; `integration` by path
    # keeps a new module out of `make test-fast` until it does.
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something true and return that, or fail naming ``what`` was
    awaited (and ``details()``, e.g. a log tail). An assertion inside ``condition`` (a process that died)
    fails at once. Waiting on the condition, not for a fixed time, keeps a slow machine from failing
    a test and a fast one from idling."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = details() if details else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f"\n{extra}" if extra else ""))
        time.sleep(interval)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class RunningServer:
    """A real `tunesmith serve` process on a free loopback port, with its output in a log file."""

    def __init__(self, home: Path, log: Path, api_key: str | None = None, extra_args: tuple[str, ...] = ()):
        self.home, self.log, self.api_key, self.extra_args = home, log, api_key, extra_args
        self.port = self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 90) -> RunningServer:
        import socket
        import subprocess
        import sys
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "TUNESMITH_HOME": str(self.home), "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith")}
        args = [sys.executable, "-m", "tunesmith", "serve", "--port", str(self.port), *self.extra_args]
        if self.api_key:
            args += ["--api-key", self.api_key]
        handle = open(self.log, "ab")
        self.process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout, f"the server on port {self.port} to answer /health", details=self.log_tail)
        return self

    def kill(self, signum: int = 9) -> None:
        """SIGKILL by default: no shutdown code runs, as when a machine loses power."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@pytest.fixture
def start_server(home, tmp_path):
    """start_server(api_key=None, extra_args=()) -> a started RunningServer; all are stopped after the test."""
    started: list[RunningServer] = []

    def start(api_key: str | None = None, extra_args: tuple[str, ...] = ()) -> RunningServer:
        server = RunningServer(home, tmp_path / f"server-{len(started)}.log", api_key, extra_args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def chromium_path() -> str | None:
    """Debian's chromium (what `make test` installs); Playwright's own browser downloads are never used."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """A headless chromium driven by Playwright; skipped, saying why, where none can be found. Module-scoped:
    Playwright's sync API keeps an asyncio loop running in the main thread while it lives, which would make
    every later ``asyncio.run`` in the session fail."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no chromium on PATH: `make test` installs Debian's (apt-get install chromium); the page's tests need it"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: make install")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


class OfflinePage:
    """A browser page that may only talk to the server under test: any request to another address is
    aborted and recorded, and ``check()`` fails the test if there was one (the page must work offline)."""

    def __init__(self, browser, server):
        self.origin = server.url
        self.context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 800})
        self.left_loopback: list[str] = []
        self.console_errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.set_default_timeout(30_000)

    def _console(self, message) -> None:
        # A refused form answers 4xx on purpose (the tests check those statuses); what is left are script
        # errors and Content-Security-Policy violations, which no page may have.
        if message.type == "error" and not message.text.startswith("Failed to load resource: the server responded"):
            self.console_errors.append(message.text)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.origin + "/") or url == self.origin:
            route.continue_()
        else:
            self.left_loopback.append(url)
            route.abort()

    def shot(self, name: str) -> None:
        """A screenshot of the page into $TUNESMITH_SCREENSHOTS (docs/screenshots: the README's pictures)."""
        folder = os.environ.get("TUNESMITH_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # caret="initial": hiding the caret injects a style, which the page's policy rightly refuses
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True, caret="initial")

    def check(self) -> None:
        assert not self.left_loopback, f"the page asked for addresses off the server: {self.left_loopback}"
        assert not self.console_errors, f"the browser console had errors: {self.console_errors}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser):
    """open_page(server) -> an OfflinePage on that server; checked and closed after the test."""
    opened: list[OfflinePage] = []

    def open_(server) -> OfflinePage:
        page = OfflinePage(browser, server)
        opened.append(page)
        return page

    yield open_
    for page in opened:
        try:
            page.check()
        finally:
            page.close()
