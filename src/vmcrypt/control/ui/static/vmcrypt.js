// vmcrypt web UI: sends htmx forms to the REST API as JSON and follows jobs.
// No business rule lives here: the API decides; this shows what it answered.
(function () {
  "use strict";

  // Fields named "x:json" are sent as the JSON value they hold (numbers, lists,
  // booleans); other fields as strings. Empty optional fields are left out.
  htmx.defineExtension("vmcrypt-json", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest") {
        evt.detail.headers["Content-Type"] = "application/json";
      }
    },
    encodeParameters: function (xhr, parameters) {
      xhr.overrideMimeType("text/json");
      var body = {};
      parameters.forEach(function (value, key) {
        if (value === "") { return; }
        if (key.endsWith(":json")) { body[key.slice(0, -5)] = JSON.parse(value); }
        else { body[key] = value; }
      });
      return JSON.stringify(body);
    }
  });

  function flash(text, ok) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.className = "flash " + (ok ? "ok" : "error");
    box.textContent = text;
  }

  function refresh() { htmx.trigger(document.body, "vmcrypt:refresh"); }

  function follow(job) {
    var area = document.getElementById("jobs");
    if (!area) { return; }
    var row = document.createElement("div");
    row.className = "job";
    row.dataset.jobId = job.id;
    var label = document.createElement("span");
    var bar = document.createElement("progress");
    bar.max = 100;
    row.appendChild(label); row.appendChild(bar);
    area.appendChild(row);
    function show(j) {
      bar.value = j.progress_percent || 0;
      label.textContent = "job " + j.id + " " + j.type + " (" + (j.component || "") + "): " +
        j.state + " " + Math.round(j.progress_percent || 0) + "% ";
      row.dataset.state = j.state;
    }
    show(job);
    function poll() {
      fetch("/api/v1/jobs/" + job.id, { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (j) {
          show(j);
          if (j.state === "running" || j.state === "queued") { setTimeout(poll, 400); }
          else { flash("job " + j.id + " " + j.state + (j.error ? ": " + j.error : ""),
                       j.state === "succeeded"); refresh(); }
        });
    }
    setTimeout(poll, 300);
  }

  document.body.addEventListener("htmx:afterRequest", function (evt) {
    var xhr = evt.detail.xhr, elt = evt.detail.elt;
    if (!xhr || !elt.hasAttribute("data-api")) { return; }
    var body = null;
    try { body = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (e) { body = null; }
    if (xhr.status >= 400) {
      var why = body && body.message ? body.message : "HTTP " + xhr.status;
      if (body && body.privilege) { why += " (needs " + body.privilege + ")"; }
      flash("Refused: " + why, false);
      return;
    }
    if (elt.dataset.redirect) { window.location = elt.dataset.redirect; return; }
    if (body && body.state && body.type && typeof body.progress_percent === "number") {
      flash("job " + body.id + " started", true); follow(body); return;
    }
    flash(elt.dataset.done || "done", true);
    refresh();
  });

  // Native provider backup: the API answers a .p12; save it as a download.
  window.vmcryptBackup = function (form, providerId, name) {
    var password = form.querySelector("input[name=password]").value;
    fetch("/api/v1/key-providers/" + providerId + "/backup", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "HX-Request": "true" },
      body: JSON.stringify({ password: password })
    }).then(function (r) {
      if (!r.ok) { return r.json().then(function (b) { flash("Refused: " + b.message, false); }); }
      return r.blob().then(function (blob) {
        var a = document.createElement("a");
        a.href = URL.createObjectURL(blob); a.download = name + ".p12"; a.click();
        flash("backup of " + name + " downloaded", true); refresh();
      });
    });
    return false;
  };

  // Restore: read the chosen file, send it base64-encoded with its password.
  window.vmcryptRestore = function (form) {
    var file = form.querySelector("input[type=file]").files[0];
    if (!file) { flash("choose a .p12 file", false); return false; }
    var reader = new FileReader();
    reader.onload = function () {
      var b64 = String(reader.result).split(",", 2)[1];
      fetch("/api/v1/key-providers/restore", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "HX-Request": "true" },
        body: JSON.stringify({ backup: b64,
          password: form.querySelector("input[name=password]").value,
          dry_run: form.querySelector("input[name=dry_run]").checked })
      }).then(function (r) { return r.json().then(function (b) {
        if (!r.ok) { flash("Refused: " + b.message, false); return; }
        flash(b.fingerprint ? "backup holds " + b.provider_id + " (" + b.fingerprint + ")"
                            : "restored " + b.name, true);
        refresh();
      }); });
    };
    reader.readAsDataURL(file);
    return false;
  };
})();
