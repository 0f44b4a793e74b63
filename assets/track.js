/*
 * FlightDeck tracker. Add to any page:
 *
 *   <script src="https://flightdeck.example.com/track.js" data-site="my-site" defer></script>
 *
 * Records PageViewed (on load and on single-page-app navigation), ElementInteraction (clicks on
 * elements marked data-fd-track="name", and window.flightdeck.track(name, props)) and
 * FormSubmitted (forms marked data-fd-form="name": field names and counts, never values), and
 * sends them in batches to POST /api/track on the server the script came from.
 *
 * Attributes on the script tag:
 *   data-site      required: the site id (1-64 of A-Z a-z 0-9 _ -)
 *   data-endpoint  where to send events (default: /api/track on the script's own origin)
 *   data-flush-ms  how long to gather a burst before sending (default 500)
 *   data-auto      "false": no automatic page views (call flightdeck.page() yourself)
 *
 * No cookies: the visitor session id lives in localStorage (sessionStorage, or memory, where
 * storage is blocked) and a new session starts after 30 minutes without events. Every event has
 * its own id, so a batch that is resent after a failed attempt is not counted twice.
 *
 * API (window.flightdeck): track(name, props), page(), flush() -> Promise, session() -> id, site.
 */
(function () {
  'use strict';

  var SESSION_TIMEOUT_MS = 30 * 60 * 1000;
  var MAX_BATCH = 50;
  var MAX_ATTEMPTS = 5;

  var script = document.currentScript ||
    document.querySelector('script[data-site][src*="track.js"]');
  if (!script) {
    return;
  }
  var site = script.getAttribute('data-site') || '';
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(site)) {
    if (window.console) {
      console.warn('FlightDeck tracker: data-site must be 1-64 of A-Z a-z 0-9 _ -, got', site);
    }
    return;
  }
  var endpoint = script.getAttribute('data-endpoint') ||
    new URL('/api/track', script.src || location.href).href;
  var flushDelay = parseInt(script.getAttribute('data-flush-ms') || '500', 10);
  if (!(flushDelay >= 0)) {
    flushDelay = 500;
  }
  var autoPageViews = script.getAttribute('data-auto') !== 'false';

  // ---- clean input: one refused event would refuse its whole batch ----

  var encoder = window.TextEncoder ? new TextEncoder() : null;

  function byteLength(text) {
    return encoder ? encoder.encode(text).length : text.length * 3;
  }

  /** Text without control characters, cut to at most maxBytes of UTF-8. */
  function clean(text, maxBytes) {
    text = String(text == null ? '' : text).replace(/[\u0000-\u001f\u007f-\u009f]/g, ' ');
    while (byteLength(text) > maxBytes) {
      text = text.slice(0, Math.floor(text.length * 0.9));
    }
    return text;
  }

  /** A name (element, form, field): trimmed, 1-128 bytes, or null. */
  function cleanName(text) {
    text = clean(text, 128).trim();
    return text ? text : null;
  }

  function currentPath() {
    return clean(location.pathname || '/', 2048) || '/';
  }

  // ---- ids and the visitor session ----

  function uuid() {
    if (window.crypto && crypto.randomUUID) {
      return crypto.randomUUID();
    }
    var bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) {
      crypto.getRandomValues(bytes);
    } else {
      for (var i = 0; i < 16; i++) {
        bytes[i] = Math.floor(Math.random() * 256);
      }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = '';
    for (var j = 0; j < 16; j++) {
      hex += (bytes[j] + 0x100).toString(16).slice(1);
    }
    return hex.slice(0, 8) + '-' + hex.slice(8, 12) + '-' + hex.slice(12, 16) + '-' +
      hex.slice(16, 20) + '-' + hex.slice(20);
  }

  var storageKey = 'flightdeck:session:' + site;
  var memory = null;

  function storage() {
    var stores = ['localStorage', 'sessionStorage'];
    for (var i = 0; i < stores.length; i++) {
      try {
        var s = window[stores[i]];
        s.setItem(storageKey + ':probe', '1');
        s.removeItem(storageKey + ':probe');
        return s;
      } catch (e) {
        // blocked (private mode, sandboxed iframe, policy): try the next one
      }
    }
    return null;
  }
  var store = storage();

  /** The current session id, starting a new session after 30 minutes of inactivity. */
  function session(touch) {
    var now = Date.now();
    var state = memory;
    if (store) {
      try {
        state = JSON.parse(store.getItem(storageKey) || 'null');
      } catch (e) {
        state = null;
      }
    }
    if (!state || typeof state.id !== 'string' || !(now - state.last < SESSION_TIMEOUT_MS)) {
      state = { id: uuid().replace(/-/g, ''), last: now };
    }
    if (touch) {
      state.last = now;
    }
    memory = state;
    if (store) {
      try {
        store.setItem(storageKey, JSON.stringify(state));
      } catch (e) {
        // full or blocked: memory still holds it
      }
    }
    return state.id;
  }

  // ---- batching and sending ----

  var queue = [];        // events not yet sent, all of queueSession
  var queueSession = null;
  var timer = null;
  var inFlight = [];     // promises of sends not yet settled

  function record(type, data) {
    var id = session(true);
    if (queueSession !== null && queueSession !== id) {
      flush(); // a batch belongs to one session
    }
    queueSession = id;
    queue.push({ id: uuid(), type: type, data: data });
    if (queue.length >= MAX_BATCH) {
      flush();
    } else if (timer === null) {
      timer = setTimeout(flush, flushDelay);
    }
  }

  /** Sends what is queued; resolves once every send so far has settled. */
  function flush(useBeacon) {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    if (queue.length > 0) {
      var body = JSON.stringify({ site: site, session: queueSession, events: queue });
      queue = [];
      queueSession = null;
      if (!(useBeacon && beacon(body))) {
        var sending = send(body, 1);
        inFlight.push(sending);
        sending.then(function () {
          inFlight.splice(inFlight.indexOf(sending), 1);
        });
      }
    }
    return Promise.all(inFlight.slice()).then(function () {});
  }

  function beacon(body) {
    try {
      return !!(navigator.sendBeacon && navigator.sendBeacon(endpoint, body));
    } catch (e) {
      return false;
    }
  }

  /**
   * POSTs a batch. The body is sent as text/plain, so no CORS preflight is needed. Network errors,
   * 408, 429 and 5xx are retried with the very same body (same event ids) after 1, 2, 4, 8 s.
   */
  function send(body, attempt) {
    var request;
    try {
      request = fetch(endpoint, {
        method: 'POST',
        body: body,
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        keepalive: body.length < 60000,
        credentials: 'omit',
        mode: 'cors'
      });
    } catch (e) {
      request = Promise.reject(e);
    }
    return request.then(function (response) {
      if (response.ok) {
        return;
      }
      if (response.status === 408 || response.status === 429 || response.status >= 500) {
        throw new Error('HTTP ' + response.status);
      }
      return response.text().then(function (text) {
        if (window.console) {
          console.warn('FlightDeck tracker: events refused (' + response.status + '): ' + text);
        }
      });
    }).catch(function (error) {
      if (attempt >= MAX_ATTEMPTS) {
        if (window.console) {
          console.warn('FlightDeck tracker: giving up on a batch:', error);
        }
        return;
      }
      return new Promise(function (resolve) {
        setTimeout(resolve, 1000 * Math.pow(2, attempt - 1));
      }).then(function () {
        return send(body, attempt + 1);
      });
    });
  }

  // The page is going away or hidden: send now, with sendBeacon, which outlives the page.
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'hidden') {
      flush(true);
    }
  });
  window.addEventListener('pagehide', function () {
    flush(true);
  });

  // ---- page views, including single-page-app navigation ----

  var lastPath = null;
  var lastUrl = null;

  function viewport() {
    return {
      w: Math.max(0, Math.round(window.innerWidth || 0)),
      h: Math.max(0, Math.round(window.innerHeight || 0))
    };
  }

  function page() {
    var data = {
      path: currentPath(),
      title: clean(document.title, 1024),
      referrer: clean(lastUrl === null ? document.referrer : lastUrl, 2048),
      viewport: viewport()
    };
    lastPath = location.pathname;
    lastUrl = location.href;
    record('PageViewed', data);
  }

  function navigated() {
    // After the app has rendered the new route, so the title is the new page's.
    setTimeout(function () {
      if (location.pathname !== lastPath) {
        page();
      }
    }, 0);
  }

  ['pushState', 'replaceState'].forEach(function (name) {
    var original = history[name];
    if (typeof original !== 'function') {
      return;
    }
    history[name] = function () {
      var result = original.apply(this, arguments);
      navigated();
      return result;
    };
  });
  window.addEventListener('popstate', navigated);

  // ---- tracked elements and forms ----

  function closest(node, selector) {
    while (node && node.nodeType !== 1) {
      node = node.parentNode;
    }
    return node && node.closest ? node.closest(selector) : null;
  }

  document.addEventListener('click', function (event) {
    var element = closest(event.target, '[data-fd-track]');
    if (!element) {
      return;
    }
    var name = cleanName(element.getAttribute('data-fd-track'));
    if (name) {
      record('ElementInteraction', {
        element: name,
        action: 'click',
        path: currentPath(),
        tag: element.tagName.toLowerCase()
      });
    }
  }, true);

  document.addEventListener('submit', function (event) {
    var form = closest(event.target, 'form[data-fd-form]');
    if (!form) {
      return;
    }
    var names = [];
    for (var i = 0; i < form.elements.length; i++) {
      var field = form.elements[i];
      var type = (field.type || '').toLowerCase();
      var fieldName = cleanName(field.name);
      if (fieldName && type !== 'submit' && type !== 'button' && type !== 'reset' &&
          names.indexOf(fieldName) < 0 && names.length < 200) {
        names.push(fieldName);
      }
    }
    record('FormSubmitted', {
      form: cleanName(form.getAttribute('data-fd-form')) || 'form',
      fields: names,
      fieldCount: names.length,
      path: currentPath()
    });
    // A submit usually navigates away: send now.
    flush(true);
  }, true);

  // ---- the page's API ----

  var api = window.flightdeck = window.flightdeck || {};
  api.site = site;
  /** Records a custom interaction: flightdeck.track('video-play', {seconds: 12}). */
  api.track = function (name, props) {
    if (typeof name !== 'string' || !cleanName(name) || byteLength(name) > 128) {
      throw new TypeError('flightdeck.track(name, props): name must be a string of 1-128 bytes');
    }
    var data = {};
    if (props && typeof props === 'object') {
      for (var key in props) {
        if (Object.prototype.hasOwnProperty.call(props, key)) {
          data[key] = props[key];
        }
      }
    }
    data.element = cleanName(name);
    data.action = (typeof data.action === 'string' && cleanName(data.action)) || 'custom';
    data.path = currentPath();
    record('ElementInteraction', data);
  };
  /** Records a page view of the current location (with data-auto="false", or for virtual pages). */
  api.page = page;
  /** Sends what is queued now; the promise settles when every send so far has. */
  api.flush = function () {
    return flush(false);
  };
  /** The visitor session id. */
  api.session = function () {
    return session(false);
  };

  if (autoPageViews) {
    page();
  }
})();
