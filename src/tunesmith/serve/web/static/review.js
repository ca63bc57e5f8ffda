// Keyboard shortcuts of the review queue: g good, b edit the correction (Ctrl+Enter records it as bad),
// 1 / 2 the better of two answers, s skip. Keys typed into the correction box are text, not shortcuts.
(function () {
  "use strict";
  function button(key) { return document.querySelector(`#verdict-form button[data-key="${key}"]`); }
  document.addEventListener("keydown", ev => {
    const form = document.getElementById("verdict-form");
    if (!form || ev.altKey || ev.metaKey) return;
    const typing = ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT";
    if (typing) {
      if (ev.key === "Enter" && ev.ctrlKey) { ev.preventDefault(); button("b").click(); }
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.ctrlKey) return;
    if (ev.key === "b") { ev.preventDefault(); const box = document.getElementById("correction"); box.focus(); box.select(); return; }
    const target = button(ev.key);
    if (target) { ev.preventDefault(); target.click(); }
  });
})();
