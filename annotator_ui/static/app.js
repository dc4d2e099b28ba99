// Keyboard shortcuts for the review page. Plain JS, no build step; the page works without it
// (the buttons are ordinary form submits). Loaded from this origin only (see the CSP header).
(function () {
  "use strict";
  function button(id) { return document.getElementById(id); }
  function send(id) {
    var form = document.getElementById("review-form");
    var b = button(id);
    if (!form || !b || form.dataset.sent) { return; }
    form.dataset.sent = "1"; // one decision per page, even if a key repeats
    form.requestSubmit(b);
  }
  function useFix() {
    var fix = button("use-fix");
    var cap = document.getElementById("caption");
    if (fix && cap) { cap.value = fix.dataset.fix; }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var fix = button("use-fix");
    if (fix) { fix.addEventListener("click", useFix); }
  });
  document.addEventListener("keydown", function (e) {
    if (!document.getElementById("review-form")) { return; }
    var t = e.target;
    var typing = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT");
    if (typing) {
      if (e.key === "Escape") { t.blur(); e.preventDefault(); }
      else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send("btn-accept"); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var keys = { a: "btn-accept", r: "btn-reject", s: "btn-skip", f: "btn-flag" };
    if (keys[e.key]) { e.preventDefault(); send(keys[e.key]); return; }
    if (e.key === "u") { e.preventDefault(); useFix(); return; }
    if (e.key === "e") {
      e.preventDefault();
      var cap = document.getElementById("caption");
      cap.focus();
      cap.setSelectionRange(cap.value.length, cap.value.length);
    }
  });
})();
