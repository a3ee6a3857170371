/* The dashboard's own script (served from this package: the CSP allows no inline script).
 *
 * Why: a live section ([data-live]: the overview, /workers, /schedules) refreshes every few
 * seconds with htmx, which leaves the old content in place when a refresh fails (the store
 * is down: a 503 naming the backend's error; the dashboard itself is gone; a timeout). The
 * old numbers then looked current. This marks such a section stale, saying why and since
 * when, and clears the mark on the next refresh that succeeds (the section recovers by
 * itself when the store is back). Text only (textContent): nothing from a response is
 * ever treated as markup.
 */
(function () {
  "use strict";

  function section(event) {
    var elt = event.detail && event.detail.elt;
    return elt && elt.matches && elt.matches("[data-live]") ? elt : null;
  }

  function stale(event, why) {
    var elt = section(event);
    if (!elt) return;
    var note = elt.querySelector(":scope > p.stale");
    if (!note) {
      note = document.createElement("p");
      note.className = "stale";
      note.setAttribute("role", "alert");
      elt.insertBefore(note, elt.firstChild);
      elt.dataset.staleSince = new Date().toISOString().replace("T", " ").slice(0, 19) + " UTC";
    }
    elt.classList.add("is-stale");
    note.textContent = "Stale: refreshing has failed since " + elt.dataset.staleSince + ": " +
      why + " What is shown below is as of its last refresh; retrying every few seconds.";
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var text = (xhr && xhr.responseText || "").trim();
    if (!text || text.charAt(0) === "<") text = "the dashboard answered HTTP " + (xhr ? xhr.status : "?") + ".";
    stale(event, text.slice(0, 2000));
  });
  document.addEventListener("htmx:sendError", function (event) {
    stale(event, "the dashboard cannot be reached (stopped, or the network is down).");
  });
  document.addEventListener("htmx:timeout", function (event) {
    stale(event, "the dashboard did not answer in time (the store may be slow or hanging).");
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = section(event);
    if (!elt || !event.detail.successful) return;
    var note = elt.querySelector(":scope > p.stale");
    if (note) note.remove();
    elt.classList.remove("is-stale");
    delete elt.dataset.staleSince;
  });
})();
