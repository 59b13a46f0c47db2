// The live test page: asks the reader for its state twice a second, counts down each read time
// (naming the pads read then) and the time left in all, and shows the camera's latest capture;
// when the test is stored, opens its result. Without this script the page refreshes itself.
// Its words come translated from the page (data-phrases), the pads' names by their codes.
(function () {
  const root = document.getElementById("live");
  const state = document.getElementById("state");
  const total = document.getElementById("total");
  const windows = document.getElementById("windows");
  const preview = document.getElementById("preview");
  const outcome = document.getElementById("outcome");
  const control = root.dataset.control;
  const words = JSON.parse(root.dataset.phrases);
  const fill = (phrase, s) => phrase.replace("{s}", s);
  let startedWith = root.dataset.after === "" ? null : Number(root.dataset.after);

  function render(s) {
    if (startedWith === null) startedWith = s.sessions;
    if (s.lock) { outcome.textContent = s.lock; outcome.hidden = false; }
    if (s.sessions > startedWith && s.last_record) {
      location.href = control ? "/tech/qc/result/" + s.last_record.seq + "?control=" + control
                              : "/results/" + s.last_record.seq;
      return;
    }
    state.textContent = words[s.state] || s.state;
    total.textContent = s.left_s === null || s.left_s === undefined
      ? fill(words.about, s.total_s || 0) : fill(words.left, s.left_s);
    windows.replaceChildren(...(s.read_groups || []).map(function (g) {
      const li = document.createElement("li");
      const pads = document.createElement("strong");
      pads.textContent = g.analytes.map(code => words.names[code] || code).join(words.comma);
      li.append(pads, words.colon + (g.left_s === null ? fill(words.read_at, g.at_s) : g.left_s > 0 ? fill(words.read_in, g.left_s)
                                                                                        : words.read));
      li.className = g.left_s === 0 ? "done" : "pending";
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
