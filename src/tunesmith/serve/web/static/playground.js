// The playground: every column asks POST /playground/stream for the same prompt and settings and reads the
// server-sent events of its answer from the response body (fetch, since EventSource cannot POST).
(function () {
  "use strict";
  const form = document.getElementById("playground");
  if (!form) return;
  const csrf = document.body.dataset.csrf;

  function parseEvents(buffer, onEvent) {  // complete "event: x\ndata: y\n\n" blocks; returns the rest
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(event, JSON.parse(data));
    }
    return buffer;
  }

  function queueForReview(model, prompt) {  // POST /review/add as a form (the page's own token), then its queue
    const form = document.createElement("form");
    form.method = "post"; form.action = "/review/add";
    for (const [name, value] of [["csrf_token", csrf], ["model", model], ["prompt", prompt]]) {
      const input = document.createElement("input");
      input.type = "hidden"; input.name = name; input.value = value;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
  }

  async function runColumn(box, request) {
    const answer = box.querySelector(".answer"), status = box.querySelector(".column-status");
    const response = await fetch("/playground/stream", {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(request),
    });
    if (!response.ok) {
      const body = await response.text();
      let message = body;
      try { message = JSON.parse(body).error.message; } catch (e) { /* plain text */ }
      status.textContent = message; status.className = "error column-status";
      return;
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    status.textContent = "generating…";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, {stream: true}), (event, data) => {
        if (event === "prompt") {
          box.querySelector(".rendered").textContent = data.text;
          box.querySelector(".prompt-tokens").textContent = data.tokens;
        } else if (event === "text") {
          answer.textContent += data.text;
        } else if (event === "done") {
          status.textContent = `${data.tokens} tokens in ${data.seconds.toFixed(1)} s · ${data.finish_reason}`;
          box.dataset.done = "yes";
        } else if (event === "error") {
          status.textContent = data.message; status.className = "error column-status";
        }
      });
    }
  }

  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const data = new FormData(form);
    const columns = data.getAll("column").filter(Boolean);
    const prompt = data.get("prompt");
    const params = new URLSearchParams({columns: columns.join(","), prompt: prompt});
    history.replaceState(null, "", "/playground?" + params.toString());  // a link or a reload shows the same
    const holder = document.getElementById("columns");
    holder.innerHTML = "";
    const template = document.getElementById("column-template");
    for (const column of columns) {
      const box = template.content.firstElementChild.cloneNode(true);
      box.dataset.column = column;
      box.querySelector(".column-title").textContent = form.querySelector(`option[value="${CSS.escape(column)}"]`).textContent;
      if (!column.startsWith("fewshot:")) {  // a model people can review: a base model or a version
        const review = box.querySelector(".review-this");
        review.hidden = false;
        review.addEventListener("click", () => queueForReview(column.replace(/^base:/, ""), prompt));
      }
      holder.appendChild(box);
      runColumn(box, {
        column: column, prompt: prompt,
        max_tokens: parseInt(data.get("max_tokens"), 10), temperature: parseFloat(data.get("temperature")),
        seed: parseInt(data.get("seed"), 10),
      });
    }
  });
})();
