/* dropvault's web pages: the drop page (/d/TOKEN) and the account page (/).
 *
 * One hand-written script, no framework, no build step, no external code:
 * it runs under `script-src 'self'` (no inline script, no eval) and never
 * sets a style attribute (`style-src 'self'`): progress is shown with
 * <progress> elements, state with classes and data- attributes.
 *
 * Uploads use tus 1.0.0 (https://tus.io/protocols/resumable-upload) over
 * XMLHttpRequest, for its upload progress events: POST creation with
 * Upload-Length and Upload-Metadata, then one PATCH with the rest of the
 * file from the server's offset. Upload URLs are kept in localStorage so
 * an upload cut off (network, reload, server restart) continues where the
 * server got to when the same file is picked again.
 */
(function () {
  "use strict";

  var TUS_VERSION = "1.0.0";
  var MAX_PARALLEL = 3;
  var MAX_BACKOFF_SECONDS = 30;
  var STORE_PREFIX = "dropvault-upload:";

  // -- small helpers ---------------------------------------------------------

  function byId(id) {
    return document.getElementById(id);
  }

  function show(node, visible) {
    if (node) {
      node.hidden = !visible;
    }
  }

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = text;
    }
    return node;
  }

  function formatBytes(n) {
    if (n === null || n === undefined) {
      return "";
    }
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var i = 0;
    var v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    if (i === 0) {
      return n === 1 ? "1 byte" : n + " bytes";
    }
    return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function formatDate(text) {
    var d = new Date(text);
    if (isNaN(d.getTime())) {
      return text;
    }
    try {
      return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    } catch (e) {
      return d.toLocaleString();
    }
  }

  // base64 of the UTF-8 bytes of `text` (tus Upload-Metadata values).
  function base64Utf8(text) {
    var bytes = new TextEncoder().encode(text);
    var binary = "";
    for (var i = 0; i < bytes.length; i += 1) {
      binary += String.fromCharCode(bytes[i]);
    }
    return btoa(binary);
  }

  function metadataHeader(meta) {
    return Object.keys(meta).map(function (key) {
      return key + " " + base64Utf8(meta[key]);
    }).join(",");
  }

  // "/a b/c#d" -> "/a%20b/c%23d": each segment percent-encoded.
  function encodePath(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }

  function joinPath(dir, name) {
    return (dir === "/" ? "" : dir) + "/" + name;
  }

  function parentPath(path) {
    var i = path.replace(/\/+$/, "").lastIndexOf("/");
    return i <= 0 ? "/" : path.slice(0, i);
  }

  function storeGet(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function storeSet(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch (e) {
      /* private mode or full: uploads still work, they just do not resume */
    }
  }

  function storeRemove(key) {
    try {
      window.localStorage.removeItem(key);
    } catch (e) {
      /* see storeSet */
    }
  }

  // Sleeps that end early when the browser comes back online.
  var sleepers = [];
  window.addEventListener("online", function () {
    var wake = sleepers;
    sleepers = [];
    wake.forEach(function (fn) { fn(); });
  });

  function sleep(ms) {
    return new Promise(function (resolve) {
      var done = false;
      function finish() {
        if (!done) {
          done = true;
          resolve();
        }
      }
      sleepers.push(finish);
      window.setTimeout(finish, ms);
    });
  }

  // One HTTP request with XMLHttpRequest. Never rejects: a network error
  // gives status 0. `onUpload(loaded)` follows the request body.
  function request(method, url, headers, body, onUpload) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url, true);
      xhr.withCredentials = true;
      Object.keys(headers || {}).forEach(function (name) {
        xhr.setRequestHeader(name, headers[name]);
      });
      if (onUpload && xhr.upload) {
        xhr.upload.onprogress = function (ev) {
          onUpload(ev.loaded);
        };
      }
      xhr.onload = function () {
        resolve({ status: xhr.status, xhr: xhr });
      };
      xhr.onerror = xhr.ontimeout = xhr.onabort = function () {
        resolve({ status: 0, xhr: xhr });
      };
      xhr.send(body === undefined ? null : body);
    });
  }

  function errorOf(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      return body && typeof body.error === "string" ? body.error : "";
    } catch (e) {
      return "";
    }
  }

  function retryAfterMs(xhr) {
    var value = xhr.getResponseHeader("Retry-After");
    var seconds = value ? parseInt(value, 10) : NaN;
    return isNaN(seconds) ? null : Math.min(seconds, 300) * 1000;
  }

  function jsonRequest(method, url, body) {
    var headers = { "Accept": "application/json" };
    var payload;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    return request(method, url, headers, payload).then(function (r) {
      var data = null;
      try {
        data = r.xhr.responseText ? JSON.parse(r.xhr.responseText) : null;
      } catch (e) {
        data = null;
      }
      r.data = data;
      return r;
    });
  }

  // -- the tus client ----------------------------------------------------------

  // Uploads `file` to the tus creation URL `opts.endpoint`.
  //   opts.metadata  {name: value} sent as Upload-Metadata
  //   opts.storeKey  localStorage key of the upload URL (resume), or null
  //   opts.messages  {invalid, unauthorized} texts for 403/404/410 and 401
  //   opts.onProgress(bytesOnServerOrSent, size)
  //   opts.onStatus(state, text)   state: "uploading", "retrying", ...
  //   opts.onResume(offset)        a stored upload continues at `offset`
  // Resolves {ok: true} or {ok: false, text: message}.
  function tusUpload(file, opts) {
    var size = file.size;
    var url = opts.storeKey ? storeGet(opts.storeKey) : null;
    var offset = 0;
    var offsetKnown = false;
    var failures = 0;
    var waitMs = null;
    var reported = false;
    var base = { "Tus-Resumable": TUS_VERSION };

    function headers(extra) {
      var h = {};
      Object.keys(base).forEach(function (k) { h[k] = base[k]; });
      Object.keys(extra || {}).forEach(function (k) { h[k] = extra[k]; });
      return h;
    }

    function forget() {
      if (opts.storeKey) {
        storeRemove(opts.storeKey);
      }
    }

    function success() {
      forget();
      opts.onProgress(size, size);
      return { ok: true };
    }

    function failure(text) {
      return { ok: false, text: text };
    }

    // What a status means: a final failure (an object), or null when the
    // request is worth trying again.
    function finalFailure(r) {
      var s = r.status;
      if (s === 422) {
        forget();
        return failure(errorOf(r.xhr) === "rejected" ? "Rejected by the malware scan"
                                                      : "Rejected by the server");
      }
      if (s === 413) {
        forget();
        return failure("Too large");
      }
      if (s === 403 || s === 404 || s === 410) {
        return failure(opts.messages.invalid);
      }
      if (s === 401) {
        return failure(opts.messages.unauthorized);
      }
      if (s === 0 || s === 409 || s === 423 || s === 429 || s >= 500) {
        return null;
      }
      forget();
      return failure("Upload failed (HTTP " + s + ")");
    }

    function retryLater(r) {
      failures += 1;
      offsetKnown = false;
      waitMs = r && r.status === 429 ? retryAfterMs(r.xhr) : null;
    }

    async function loop() {
      for (;;) {
        if (failures > 0) {
          var delay = waitMs !== null ? waitMs
            : Math.min(MAX_BACKOFF_SECONDS, Math.pow(2, failures - 1)) * 1000;
          opts.onStatus("retrying", "Waiting to resume…");
          await sleep(delay);
        }
        var r;

        if (!url) {
          opts.onStatus("uploading", "Starting…");
          r = await request("POST", opts.endpoint, headers({
            "Upload-Length": String(size),
            "Upload-Metadata": metadataHeader(opts.metadata)
          }));
          if (r.status !== 201) {
            var bad = finalFailure(r);
            if (bad) {
              return bad;
            }
            retryLater(r);
            continue;
          }
          var location = r.xhr.getResponseHeader("Location");
          if (!location) {
            return failure("Upload failed (no upload URL)");
          }
          url = new URL(location, window.location.href).href;
          if (size === 0) {
            // The server commits an empty file at creation.
            return success();
          }
          if (opts.storeKey) {
            storeSet(opts.storeKey, url);
          }
          var created = r.xhr.getResponseHeader("Upload-Offset");
          offset = created ? parseInt(created, 10) || 0 : 0;
          offsetKnown = true;
          failures = 0;
        }

        if (!offsetKnown) {
          r = await request("HEAD", url, headers({}));
          if (r.status === 404 || r.status === 410) {
            // Gone (finished, expired or dropped): start a new upload.
            forget();
            url = null;
            continue;
          }
          if (r.status !== 200 && r.status !== 204) {
            var headBad = finalFailure(r);
            if (headBad) {
              return headBad;
            }
            retryLater(r);
            continue;
          }
          offset = parseInt(r.xhr.getResponseHeader("Upload-Offset") || "0", 10) || 0;
          offsetKnown = true;
          if (!reported) {
            reported = true;
            opts.onResume(offset);
          }
          if (offset >= size) {
            return success();
          }
        }

        opts.onProgress(offset, size);
        opts.onStatus("uploading", offset > 0 ? "Resuming…" : "Uploading…");
        var from = offset;
        r = await request("PATCH", url, headers({
          "Upload-Offset": String(from),
          "Content-Type": "application/offset+octet-stream"
        }), file.slice(from), function (loaded) {
          opts.onProgress(Math.min(size, from + loaded), size);
          if (from + loaded >= size) {
            opts.onStatus("uploading", "Finishing…");
          }
        });
        if (r.status === 204) {
          var next = parseInt(r.xhr.getResponseHeader("Upload-Offset") || "", 10);
          if (isNaN(next) || next >= size) {
            return success();
          }
          offset = next;
          failures = 0;
          continue;
        }
        if (r.status === 404 || r.status === 410) {
          // The upload may be gone while the link is fine: HEAD tells.
          offsetKnown = false;
          failures += 1;
          waitMs = 0;
          if (failures > 3) {
            return failure(opts.messages.invalid);
          }
          continue;
        }
        var patchBad = finalFailure(r);
        if (patchBad) {
          return patchBad;
        }
        if (r.status === 409 && failures === 0) {
          // Offset mismatch: learn the right one at once.
          offsetKnown = false;
          continue;
        }
        retryLater(r);
      }
    }

    return loop();
  }

  // -- upload list (both pages) -----------------------------------------------

  // Shows a list of uploads with a progress bar each and an overall one,
  // runs them (at most MAX_PARALLEL at a time) with `uploadOptions(file)`.
  function UploadList(uploadOptions, onFileDone) {
    this.list = byId("file-list");
    this.overall = byId("overall");
    this.overallProgress = byId("overall-progress");
    this.overallPercent = byId("overall-percent");
    this.overallStatus = byId("overall-status");
    this.allDone = byId("all-done");
    this.uploadOptions = uploadOptions;
    this.onFileDone = onFileDone || function () {};
    this.items = [];
    this.queue = [];
    this.running = 0;
    this.counter = 0;
  }

  UploadList.prototype.add = function (files) {
    var self = this;
    Array.prototype.forEach.call(files, function (file) {
      var opts = self.uploadOptions(file);
      var busy = self.items.some(function (it) {
        return it.active && opts.storeKey && it.storeKey === opts.storeKey;
      });
      if (busy) {
        return; // the same file is already on its way
      }
      var item = self.render(file, opts.storeKey);
      self.items.push(item);
      self.queue.push({ item: item, opts: opts });
    });
    show(this.allDone, false);
    this.update();
    this.pump();
  };

  UploadList.prototype.render = function (file, storeKey) {
    this.counter += 1;
    var id = "upload-" + this.counter;
    var li = make("li", "file");
    li.dataset.name = file.name;
    li.dataset.state = "queued";
    var head = make("div", "file-head");
    var name = make("span", "file-name", file.name);
    name.id = id + "-name";
    var size = make("span", "file-size", formatBytes(file.size));
    head.appendChild(name);
    head.appendChild(size);
    var bar = make("progress", "file-progress");
    bar.id = id + "-progress";
    bar.max = file.size > 0 ? file.size : 1;
    bar.value = 0;
    bar.setAttribute("aria-label", "Upload progress of " + file.name);
    var foot = make("div", "file-foot");
    var status = make("span", "file-status", "Waiting…");
    status.setAttribute("aria-live", "polite");
    var percent = make("span", "percent", "0%");
    percent.setAttribute("aria-hidden", "true");
    foot.appendChild(status);
    foot.appendChild(percent);
    li.appendChild(head);
    li.appendChild(bar);
    li.appendChild(foot);
    this.list.appendChild(li);
    return {
      file: file, li: li, bar: bar, status: status, percent: percent,
      storeKey: storeKey, sent: 0, active: true, ok: null
    };
  };

  UploadList.prototype.setProgress = function (item, sent) {
    item.sent = sent;
    var size = item.file.size;
    item.bar.value = size > 0 ? sent : (sent >= 0 && item.ok ? 1 : 0);
    var pct = size > 0 ? Math.floor((sent * 100) / size) : (item.ok ? 100 : 0);
    item.percent.textContent = pct + "%";
    this.update();
  };

  UploadList.prototype.pump = function () {
    var self = this;
    while (this.running < MAX_PARALLEL && this.queue.length > 0) {
      var next = this.queue.shift();
      this.running += 1;
      this.run(next.item, next.opts).then(function () {
        self.running -= 1;
        self.pump();
        self.update();
      });
    }
  };

  UploadList.prototype.run = function (item, opts) {
    var self = this;
    opts.onProgress = function (sent) {
      self.setProgress(item, sent);
    };
    opts.onStatus = function (state, text) {
      item.li.dataset.state = state;
      if (item.status.textContent !== text) {
        item.status.textContent = text;
      }
      self.update();
    };
    opts.onResume = function (offset) {
      item.li.dataset.resumedFrom = String(offset);
    };
    return tusUpload(item.file, opts).then(function (result) {
      item.active = false;
      item.ok = result.ok;
      if (result.ok) {
        item.li.dataset.state = "done";
        item.status.textContent = "Uploaded";
        item.bar.value = item.bar.max;
        item.percent.textContent = "100%";
        self.onFileDone(item.file);
      } else {
        item.li.dataset.state = "error";
        item.status.textContent = result.text;
        item.percent.textContent = "";
      }
      self.update();
    }, function (err) {
      item.active = false;
      item.ok = false;
      item.li.dataset.state = "error";
      item.status.textContent = "Upload failed: " + (err && err.message ? err.message : err);
      self.update();
    });
  };

  UploadList.prototype.update = function () {
    var total = 0;
    var sent = 0;
    var done = 0;
    var failed = 0;
    var waiting = 0;
    this.items.forEach(function (it) {
      total += it.file.size;
      sent += it.ok ? it.file.size : Math.min(it.sent, it.file.size);
      if (it.ok === true) {
        done += 1;
      } else if (it.ok === false) {
        failed += 1;
      } else if (it.li.dataset.state === "retrying") {
        waiting += 1;
      }
    });
    var count = this.items.length;
    show(this.overall, count > 0);
    if (count === 0) {
      return;
    }
    var finished = done + failed;
    if (total > 0) {
      this.overallProgress.max = total;
      this.overallProgress.value = finished === count && failed === 0 ? total : sent;
    } else {
      this.overallProgress.max = count;
      this.overallProgress.value = finished;
    }
    var pct = total > 0 ? Math.floor((this.overallProgress.value * 100) / total)
                        : Math.floor((finished * 100) / count);
    this.overallPercent.textContent = pct + "%";
    var text;
    if (finished < count) {
      text = "Uploading " + (count - finished) + " of " + count +
        (count === 1 ? " file" : " files") + "…";
      if (waiting > 0) {
        text += " Waiting for the connection to come back.";
      }
    } else if (failed === 0) {
      text = count === 1 ? "1 file uploaded." : count + " files uploaded.";
    } else {
      text = done + " of " + count + " files uploaded, " + failed + " failed.";
    }
    if (this.overallStatus.textContent !== text) {
      this.overallStatus.textContent = text;
    }
    var allOk = finished === count && failed === 0;
    show(this.allDone, allOk);
    document.body.dataset.uploads = finished < count ? "running" : (allOk ? "done" : "failed");
  };

  // -- drop page -----------------------------------------------------------------

  function dropPage() {
    var match = /^\/d\/([^/]+)/.exec(window.location.pathname);
    var token = match ? match[1] : "";
    var linkBase = "/d/" + token;

    var loading = byId("loading");
    var invalid = byId("link-invalid");
    var facts = byId("link-facts");
    var unlockForm = byId("unlock-form");
    var unlockError = byId("unlock-error");
    var section = byId("drop-section");
    var input = byId("file-input");
    var zone = byId("dropzone");

    var refreshing = null;
    var list = new UploadList(function (file) {
      return {
        endpoint: linkBase + "/uploads",
        metadata: { filename: file.name },
        storeKey: STORE_PREFIX + token + ":" + file.name + ":" + file.size + ":" + file.lastModified,
        messages: {
          invalid: "This link is no longer valid",
          unauthorized: "This link needs its password: reload the page"
        }
      };
    }, function () {
      // What is left of the link's limits after this file.
      if (!refreshing) {
        refreshing = window.setTimeout(function () {
          refreshing = null;
          jsonRequest("GET", linkBase + "/info").then(function (r) {
            if (r.status === 200 && r.data) {
              showFacts(r.data);
            }
          });
        }, 300);
      }
    });

    function invalidLink() {
      show(loading, false);
      show(facts, false);
      show(unlockForm, false);
      show(section, false);
      show(invalid, true);
      document.body.dataset.link = "invalid";
    }

    function showFacts(info) {
      byId("fact-folder").textContent = info.folder || "/";
      byId("fact-expires").textContent = info.expires ? formatDate(info.expires) : "Never";
      var limits = [];
      if (info.max_file_bytes !== null && info.max_file_bytes !== undefined) {
        limits.push("up to " + formatBytes(info.max_file_bytes) + " per file");
      }
      if (info.uploads_left !== null && info.uploads_left !== undefined) {
        limits.push(info.uploads_left + (info.uploads_left === 1 ? " file" : " files") + " left");
      }
      if (info.bytes_left !== null && info.bytes_left !== undefined) {
        limits.push(formatBytes(info.bytes_left) + " left");
      }
      var text = limits.join(" · ");
      byId("fact-limits").textContent = text.charAt(0).toUpperCase() + text.slice(1);
      show(byId("fact-limits-row"), limits.length > 0);
      show(facts, true);
    }

    function openDrop() {
      show(unlockForm, false);
      show(section, true);
      document.body.dataset.link = "ready";
    }

    function loadInfo() {
      return jsonRequest("GET", linkBase + "/info").then(function (r) {
        show(loading, false);
        if (r.status !== 200 || !r.data) {
          invalidLink();
          return null;
        }
        showFacts(r.data);
        return r.data;
      });
    }

    loadInfo().then(function (info) {
      if (!info) {
        return;
      }
      if (info.password && !info.unlocked) {
        show(unlockForm, true);
        document.body.dataset.link = "locked";
        byId("unlock-password").focus();
      } else {
        openDrop();
      }
    });

    unlockForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var password = byId("unlock-password").value;
      var button = byId("unlock-submit");
      button.disabled = true;
      unlockError.textContent = "";
      jsonRequest("POST", linkBase + "/unlock", { password: password }).then(function (r) {
        button.disabled = false;
        if (r.status === 204 || r.status === 200) {
          byId("unlock-password").value = "";
          loadInfo().then(function (info) {
            if (info) {
              openDrop();
              zone.focus();
            }
          });
        } else if (r.status === 403 && /wrong/i.test(errorOf(r.xhr))) {
          unlockError.textContent = "Wrong password";
          byId("unlock-password").select();
        } else if (r.status === 403 || r.status === 429) {
          unlockError.textContent = "Too many attempts. Try again later.";
        } else if (r.status === 404 || r.status === 410) {
          invalidLink();
        } else if (r.status === 0) {
          unlockError.textContent = "No connection to the server. Try again.";
        } else {
          unlockError.textContent = "Wrong password";
        }
      });
    });

    input.addEventListener("change", function () {
      if (input.files && input.files.length) {
        list.add(input.files);
      }
      input.value = "";
    });

    zone.addEventListener("click", function (ev) {
      if (ev.target.closest("label")) {
        return; // the label opens the picker itself
      }
      input.click();
    });
    zone.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " " || ev.key === "Spacebar") {
        ev.preventDefault();
        input.click();
      }
    });

    var depth = 0;
    zone.addEventListener("dragenter", function (ev) {
      ev.preventDefault();
      depth += 1;
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragover", function (ev) {
      ev.preventDefault();
      if (ev.dataTransfer) {
        ev.dataTransfer.dropEffect = "copy";
      }
    });
    zone.addEventListener("dragleave", function () {
      depth = Math.max(0, depth - 1);
      if (depth === 0) {
        zone.classList.remove("dragover");
      }
    });
    zone.addEventListener("drop", function (ev) {
      ev.preventDefault();
      depth = 0;
      zone.classList.remove("dragover");
      if (ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files.length) {
        list.add(ev.dataTransfer.files);
      }
    });
    // A file dropped beside the zone must not make the browser open it.
    ["dragover", "drop"].forEach(function (type) {
      window.addEventListener(type, function (ev) {
        if (!zone.contains(ev.target)) {
          ev.preventDefault();
        }
      });
    });
  }

  // -- account page ----------------------------------------------------------------

  function accountPage() {
    var loading = byId("loading");
    var loginForm = byId("login-form");
    var loginError = byId("login-error");
    var section = byId("files-section");
    var sessionBox = byId("session-box");
    var rows = byId("file-rows");
    var listStatus = byId("list-status");
    var input = byId("file-input");
    var current = "/";
    var user = "";

    var uploads = new UploadList(function (file) {
      var folder = current;
      return {
        endpoint: "/uploads",
        metadata: { filename: file.name, folder: folder },
        storeKey: STORE_PREFIX + "account:" + user + ":" + folder + ":" + file.name + ":" +
          file.size + ":" + file.lastModified,
        messages: {
          invalid: "Not allowed",
          unauthorized: "Your session ended: log in again"
        }
      };
    }, function () {
      listFolder(current);
    });

    function pathFromHash() {
      var hash = window.location.hash.replace(/^#/, "");
      if (!hash || hash.charAt(0) !== "/") {
        return "/";
      }
      try {
        return hash.split("/").map(decodeURIComponent).join("/") || "/";
      } catch (e) {
        return "/";
      }
    }

    function showLogin() {
      show(loading, false);
      show(section, false);
      show(sessionBox, false);
      show(loginForm, true);
      document.body.dataset.session = "out";
      byId("login-user").focus();
    }

    function showFiles(name) {
      user = name;
      byId("session-user").textContent = name;
      show(loading, false);
      show(loginForm, false);
      show(sessionBox, true);
      show(section, true);
      document.body.dataset.session = "in";
      listFolder(pathFromHash());
    }

    function entryRow(entry) {
      var tr = make("tr");
      var nameCell = make("td", "name");
      var link = make("a", entry.kind === "dir" ? "entry-dir" : "entry-file");
      var path = joinPath(current, entry.name);
      if (entry.kind === "dir") {
        link.href = "#" + encodePath(path);
        link.textContent = entry.name + "/";
      } else {
        link.href = "/files" + encodePath(path);
        link.setAttribute("download", entry.name);
        link.textContent = entry.name;
      }
      nameCell.appendChild(link);
      tr.appendChild(nameCell);
      tr.appendChild(make("td", "num", entry.kind === "dir" ? "—" : formatBytes(entry.size)));
      tr.appendChild(make("td", "date", entry.modified ? formatDate(entry.modified) : ""));
      tr.dataset.kind = entry.kind;
      tr.dataset.name = entry.name;
      return tr;
    }

    function listFolder(path) {
      listStatus.textContent = "Loading…";
      return jsonRequest("GET", "/api/files?path=" + encodeURIComponent(path)).then(function (r) {
        if (r.status === 401) {
          showLogin();
          return;
        }
        if (r.status !== 200 || !r.data) {
          listStatus.textContent = r.status === 404 ? "This folder does not exist." :
            "Could not load the folder (HTTP " + r.status + ").";
          return;
        }
        current = r.data.path || path;
        byId("current-path").textContent = current;
        var up = byId("up-link");
        up.href = "#" + encodePath(parentPath(current));
        show(up, current !== "/");
        while (rows.firstChild) {
          rows.removeChild(rows.firstChild);
        }
        var entries = (r.data.entries || []).slice().sort(function (a, b) {
          if (a.kind !== b.kind) {
            return a.kind === "dir" ? -1 : 1;
          }
          return a.name.localeCompare(b.name);
        });
        entries.forEach(function (entry) {
          rows.appendChild(entryRow(entry));
        });
        show(byId("empty-folder"), entries.length === 0);
        listStatus.textContent = entries.length + (entries.length === 1 ? " item" : " items") +
          (r.data.truncated ? " (list truncated)" : "");
        section.dataset.path = current;
      });
    }

    loginForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var name = byId("login-user").value;
      var password = byId("login-password").value;
      var button = byId("login-submit");
      button.disabled = true;
      loginError.textContent = "";
      jsonRequest("POST", "/api/login", { user: name, password: password }).then(function (r) {
        button.disabled = false;
        if (r.status === 204 || r.status === 200) {
          byId("login-password").value = "";
          showFiles(name);
        } else if (r.status === 401) {
          loginError.textContent = "Wrong user name or password";
        } else if (r.status === 403 || r.status === 429) {
          loginError.textContent = "Too many failed attempts. Try again later.";
        } else if (r.status === 0) {
          loginError.textContent = "No connection to the server. Try again.";
        } else {
          loginError.textContent = "Could not log in (HTTP " + r.status + ")";
        }
      });
    });

    byId("logout").addEventListener("click", function () {
      jsonRequest("POST", "/api/logout", {}).then(function () {
        showLogin();
      });
    });

    window.addEventListener("hashchange", function () {
      if (document.body.dataset.session === "in") {
        listFolder(pathFromHash());
      }
    });

    input.addEventListener("change", function () {
      if (input.files && input.files.length) {
        uploads.add(input.files);
      }
      input.value = "";
    });

    jsonRequest("GET", "/api/session").then(function (r) {
      if (r.status === 200 && r.data && r.data.user) {
        showFiles(r.data.user);
      } else {
        showLogin();
      }
    });
  }

  function main() {
    var page = document.body.dataset.page;
    if (page === "drop") {
      dropPage();
    } else if (page === "account") {
      accountPage();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", main);
  } else {
    main();
  }
}());
