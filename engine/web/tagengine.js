/*! tagengine browser forwarder: sends the page's data-layer pushes to the collect endpoint. */
/*
 * <script src="https://www.shop.example/collect/tagengine.js" async></script>
 *
 * - Forwards every push made to window.adobeDataLayer (the Adobe Client Data Layer) and to a
 *   GTM-style window.dataLayer, those made before it loaded included, in their order, each once
 *   and as pushed (for ACDL the pushed object, not the computed state; functions are not sent).
 * - Gives each push an id unique to the page load (a retried push is not processed twice), and
 *   sends the pushes of one task in one POST {"pushes": [{"id", "push"}, ...]} with the cookies.
 * - Retries in order, with exponential backoff, on network errors, 429 and 5xx (Retry-After is
 *   honoured); a push the endpoint refuses (ok: false) is dropped with a console warning.
 * - On pagehide or when the page is hidden, sends what is left with navigator.sendBeacon.
 * - The endpoint is where this script came from (its src minus /tagengine.js), or the
 *   script's data-endpoint attribute. Each answer is dispatched on window as a
 *   "tagengine:result" event ({id, push, result}): the propositions a page may render.
 *
 * A plain file, no build step: tests/test_browser.py runs it in Chromium and keeps it under
 * 3 KB minified and gzipped.
 */
(function (w, d, nav) {
  "use strict";
  if (w.tagengine) return; // loaded twice: the first copy forwards
  var me = d.currentScript || d.querySelector('script[src*="tagengine.js"]') || {};
  var base =
    (me.getAttribute && me.getAttribute("data-endpoint")) ||
    (me.src || "/collect/tagengine.js").replace(/\/tagengine\.js([?#].*)?$/, "");
  var url = base.replace(/\/$/, "") + "/";
  var MAX = 50; // pushes a request (the endpoint takes 100 by default)
  var BYTES = 60000; // a request's pushes, at most (a beacon carries 64 KB); one push may be more
  var limit = MAX; // 1 after a 413: the pushes of a refused batch go one by one
  var page = Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
  var count = 0;
  var queue = []; // [{id, push, text}] not answered yet, in push order
  var busy = false; // a request in flight, or waiting to be retried
  var timer = 0;
  var backoff = 0;
  var leaving = false;

  function warn(message) {
    if (w.console) console.warn("tagengine: " + message);
  }

  function add(push) {
    // plain objects only: functions, arrays and gtag()'s arguments objects are not pushes
    if (Object.prototype.toString.call(push) !== "[object Object]") return;
    var text;
    try {
      text = JSON.stringify(push); // a snapshot: later changes to the object are not sent
    } catch (e) {
      return warn("push not forwarded: " + e);
    }
    queue.push({ id: page + "." + ++count, push: push, text: text });
    if (leaving) Promise.resolve().then(exit);
    else if (!busy && !timer) timer = setTimeout(flush, 0); // the rest of this task joins it
  }

  function body(items) {
    var parts = [];
    for (var i = 0; i < items.length; i++)
      parts.push('{"id":"' + items[i].id + '","push":' + items[i].text + "}");
    return '{"pushes":[' + parts.join(",") + "]}";
  }

  function take(items, most) {
    var batch = [];
    for (var i = 0, size = 0; i < items.length && batch.length < most; i++) {
      size += items[i].text.length + 40;
      if (batch.length && size > BYTES) break;
      batch.push(items[i]);
    }
    return batch;
  }

  function answered(batch) {
    queue = queue.filter(function (item) {
      return batch.indexOf(item) < 0;
    });
  }

  function retry(after) {
    backoff = Math.min(backoff ? backoff * 2 : 500, 60000);
    setTimeout(
      function () {
        busy = false;
        flush();
      },
      Math.max(after || 0, backoff * (0.75 + Math.random() / 2))
    );
  }

  function flush() {
    timer = 0;
    if (busy || !queue.length) return;
    busy = true;
    var batch = take(queue, limit);
    // text/plain (a string body) needs no CORS preflight, as sendBeacon's
    fetch(url, { method: "POST", body: body(batch), credentials: "include" }).then(
      function (response) {
        var status = response.status;
        if (status == 413 && batch.length > 1) {
          limit = 1; // too big together: each alone, so only a push too big by itself is lost
          busy = false;
          return flush();
        }
        if (status == 429 || status >= 500) {
          var after = response.headers.get("Retry-After");
          after = after && (isNaN(after) ? Date.parse(after) - Date.now() : after * 1000);
          return retry(Math.min(after || 0, 300000));
        }
        return response
          .json()
          .catch(function () {}) // no JSON: the status says it all
          .then(function (answer) {
            var results = (answer && answer.results) || [];
            if (!response.ok) warn(status + ": " + ((answer && answer.error) || "refused"));
            answered(batch);
            for (var i = 0; i < batch.length; i++) {
              var result = results[i] || { ok: response.ok };
              if (result.ok === false)
                warn("push " + batch[i].id + " dropped: " + (result.error || status));
              w.dispatchEvent(
                new CustomEvent("tagengine:result", {
                  detail: { id: batch[i].id, push: batch[i].push, result: result }
                })
              );
            }
            backoff = 0;
            limit = MAX;
            busy = false;
            flush();
          });
      },
      function () {
        retry(); // a network error
      }
    );
  }

  function exit() {
    var items = queue;
    queue = [];
    for (var batch; (batch = take(items, MAX)).length; items = items.slice(batch.length)) {
      var text = body(batch);
      if (!(nav.sendBeacon && nav.sendBeacon(url, text)))
        fetch(url, { method: "POST", body: text, credentials: "include", keepalive: true }).catch(
          function () {}
        );
    }
  }

  w.addEventListener("pagehide", function () {
    leaving = true;
    exit();
  });
  w.addEventListener("pageshow", function () {
    leaving = false;
  });
  d.addEventListener("visibilitychange", function () {
    leaving = d.visibilityState == "hidden";
    if (leaving) exit();
  });

  // The Adobe Client Data Layer, as its docs say: a function pushed to it runs once ACDL is
  // ready, with the pushes before it in the array. An event push with data fires both
  // adobeDataLayer:event and adobeDataLayer:change: events are taken from the first only.
  (w.adobeDataLayer = w.adobeDataLayer || []).push(function (dl) {
    for (var i = 0; i < dl.length; i++) add(dl[i]);
    dl.addEventListener("adobeDataLayer:event", add, { scope: "future" });
    dl.addEventListener(
      "adobeDataLayer:change",
      function (item) {
        if (!(typeof item.event == "string" && item.event)) add(item); // as ACDL tells them
      },
      { scope: "future" }
    );
  });

  // A GTM-style data layer: the pushes so far, then every push through it.
  var gtm = (w.dataLayer = w.dataLayer || []);
  for (var i = 0; i < gtm.length; i++) add(gtm[i]);
  var push = gtm.push;
  gtm.push = function () {
    for (var i = 0; i < arguments.length; i++) add(arguments[i]);
    return push.apply(gtm, arguments);
  };

  w.tagengine = {
    endpoint: url,
    pending: function () {
      return queue.length;
    }
  };
})(window, document, navigator);
