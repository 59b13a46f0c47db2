// The live test page: asks the reader for its state twice a second, counts down each read time and
// shows the camera's latest capture; when the result is stored, opens it.
(function () {
  const state = document.getElementById("state");
  const windows = document.getElementById("windows");
  const preview = document.getElementById("preview");
  const outcome = document.getElementById("outcome");
  let startedWith = null;

  function render(s) {
    if (startedWith === null) startedWith = s.sessions;
    if (s.lock) { outcome.textContent = s.lock; outcome.hidden = false; }
    if (s.sessions > startedWith && s.last_record) {
      if (s.last_record.status === "ok") { location.href = "/results/" + s.last_record.seq; return; }
      outcome.textContent = s.last_record.message || "The reading was refused: see the result.";
      outcome.hidden = false;
      state.innerHTML = '<a href="/results/' + s.last_record.seq + '">See the stored record</a>';
      return;
    }
    state.textContent = {idle: "waiting", armed: "put the strip in the tray", developing: "the pads are developing",
                         stored: "stored", offline: "no reader running"}[s.state] || s.state;
    windows.replaceChildren(...(s.read_times_s || []).map(function (t) {
      const li = document.createElement("li");
      if (s.elapsed_s === null || s.elapsed_s === undefined) { li.textContent = "read at " + t + " s"; }
      else {
        const left = Math.ceil(t - s.elapsed_s);
        li.textContent = left > 0 ? "read in " + left + " s" : "read";
        li.className = left > 0 ? "pending" : "done";
      }
      return li;
    }));
    if (s.preview) { preview.src = "/api/session/preview.jpg?t=" + Date.now(); preview.hidden = false; }
  }

  function poll() {
    fetch("/api/session", {cache: "no-store"}).then(r => r.json()).then(function (s) {
      render(s);
      if (!(s.sessions > startedWith && s.last_record)) setTimeout(poll, 500);
    }).catch(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
