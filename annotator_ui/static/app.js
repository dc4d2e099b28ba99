// Keyboard shortcuts for the review page. Plain JS, no build step; the page works without it
// (the buttons are ordinary form submits). Loaded from this origin only (see the CSP header).
(function () {
  "use strict";
  var DRAFT = "rev-draft"; // {id, caption}: the caption being edited, kept across a refused post
  function button(id) { return document.getElementById(id); }
  function saveDraft() {
    // why: a lost lease or an expired form refuses the post; the annotator's edit must survive it
    var form = document.getElementById("review-form");
    var cap = document.getElementById("caption");
    if (!form || !cap) { return; }
    try {
      if (cap.value === cap.defaultValue) { sessionStorage.removeItem(DRAFT); }
      else { sessionStorage.setItem(DRAFT, JSON.stringify({ id: form.dataset.item, caption: cap.value })); }
    } catch (err) { /* storage off or full: the error page still shows the caption */ }
  }
  function restoreDraft() {
    // the same item again (the lease was renewed or taken again): put the edit back; another
    // item: forget it (a caption belongs to its image)
    var form = document.getElementById("review-form");
    var cap = document.getElementById("caption");
    var draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(DRAFT) || "null"); } catch (err) { return; }
    if (!form || !cap || !draft) { return; }
    if (draft.id !== form.dataset.item) { sessionStorage.removeItem(DRAFT); return; }
    if (draft.caption !== cap.value) {
      cap.value = draft.caption;
      var note = document.createElement("p");
      note.id = "draft-note";
      note.className = "note";
      note.textContent = "Your edited caption from before was restored.";
      cap.parentNode.insertBefore(note, cap.nextSibling);
    }
  }
  function send(id) {
    var form = document.getElementById("review-form");
    var b = button(id);
    if (!form || !b || form.dataset.sent) { return; }
    form.dataset.sent = "1"; // one decision per page, even if a key repeats
    saveDraft();
    form.requestSubmit(b);
  }
  function useFix() {
    var fix = button("use-fix");
    var cap = document.getElementById("caption");
    if (fix && cap) { cap.value = fix.dataset.fix; saveDraft(); }
  }
  function isTextEntry(t) {
    // a ticked checkbox (a reject reason) keeps focus but takes no letters: shortcuts still work
    if (!t) { return false; }
    if (t.tagName === "TEXTAREA" || t.isContentEditable) { return true; }
    if (t.tagName !== "INPUT") { return false; }
    return ["checkbox", "radio", "button", "submit", "reset"].indexOf((t.type || "").toLowerCase()) < 0;
  }
  document.addEventListener("DOMContentLoaded", function () {
    var fix = button("use-fix");
    if (fix) { fix.addEventListener("click", useFix); }
    var cap = document.getElementById("caption");
    if (cap) { cap.addEventListener("input", saveDraft); }
    var form = document.getElementById("review-form");
    if (form) { form.addEventListener("submit", saveDraft); }
    restoreDraft();
  });
  document.addEventListener("keydown", function (e) {
    if (!document.getElementById("review-form")) { return; }
    var t = e.target;
    if (isTextEntry(t)) {
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
