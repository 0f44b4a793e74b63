// FlightDeck's live dashboard.
//
// Two live sources, both resumable:
// - the event stream (flightdeck.js, batched so thousands of events per second cost a few renders):
//   the per-second chart, the rates and the feed of latest events;
// - the projections' numbers (`/api/stats` and its live stream): counters, top pages, interactions,
//   forms and sessions. Those are counted once, in PostgreSQL, so a reconnect or a server restart
//   can never count an event twice on this page.
// Rendering happens at most once per animation frame, whatever the event rate.
//
// Both go with the session cookie the login link set (same origin). When the session expires (the
// event stream ends with `token-expired`, or a request answers 401), the page says so and stops:
// reconnecting with the same cookie could never succeed.
//
// URL parameters: `site`, `type`, `page` (the filters), and for benchmarks and debugging
// `transport=ws` (default: Server-Sent Events) and `batch=off` (one frame per event).

import { subscribe } from '/flightdeck.js';
import uPlot from '/assets/vendor/uPlot.esm.js';

const TRACKED = ['PageViewed', 'ElementInteraction', 'FormSubmitted'];
const LABELS = { PageViewed: 'Page views', ElementInteraction: 'Interactions', FormSubmitted: 'Form submissions' };
const COLORS = { PageViewed: '#5cc8ff', ElementInteraction: '#c792ea', FormSubmitted: '#ffc857', other: '#8a96b0' };
const WINDOW_SECONDS = 120;
/** The chart spans at least this much, and grows to WINDOW_SECONDS as the page stays open. */
const MIN_WINDOW_SECONDS = 20;
const OPENED_SECOND = Math.floor(Date.now() / 1000);
const FEED_SIZE = 60;
const STATS_WINDOW_MINUTES = 60;
/** The feed is redrawn at most this often: at thousands of events per second, redrawing it every
 * animation frame would cost layout and paint that no reader can follow. */
const FEED_INTERVAL_MS = 250;

const $ = (id) => document.getElementById(id);

/** Everything the page shows, updated by the sources and drawn by `render`. */
const state = {
  filter: { site: '', type: '', page: '' },
  /** How the event stream is delivered: `transport` ('sse' or 'ws'), `batch` (false: none). */
  delivery: { transport: 'sse', batch: true },
  subscription: null,
  statsSource: null,
  connection: 'connecting',
  lastPosition: null,
  /** Per-second buckets of live events: Map<epochSecond, Map<type, count>>. */
  buckets: new Map(),
  feed: [],
  feedDirty: true,
  /** The feed's rows must be rebuilt (the filters changed), not just topped up. */
  feedReset: false,
  types: new Set(TRACKED),
  sites: new Set(),
  pages: new Set(),
  stats: null,
  statsDirty: false,
  received: 0,
  /** Frames (server batches, or single events without batching) received since the page opened. */
  frames: 0,
  /** The session ended (expired, or refused): the page stopped its live sources. */
  sessionExpired: false,
};

// ---------------------------------------------------------------------------------------------
// The event stream

function streamOptions(from) {
  const { site, type, page } = state.filter;
  const options = { from, transport: state.delivery.transport };
  if (state.delivery.batch) options.batch = { maxEvents: 1000, maxDelayMs: 100 };
  if (type) options.types = [type];
  if (site) options.where = { ...(options.where || {}), 'data.site': site };
  if (page) options.where = { ...(options.where || {}), 'data.path': page };
  return options;
}

/** Whether `event` passes the current filters (what the server applies to the subscription). */
function matches(event) {
  const { site, type, page } = state.filter;
  const d = event.data && typeof event.data === 'object' ? event.data : {};
  return (!type || event.type === type) && (!site || d.site === site) && (!page || d.path === page);
}

/**
 * (Re)subscribes with the current filters. After a filter change the feed keeps the events that
 * pass the new filters and the new subscription starts after the last position seen, so nothing
 * in between is missed; the chart starts over, as its old counts were for other filters.
 */
function connectEvents() {
  const previous = state.subscription;
  const from = previous?.lastPosition ?? 'now';
  state.subscription = null; // its 'closed' state is not the page's
  if (previous) previous.close();
  state.connection = 'connecting'; // until the new subscription says otherwise
  state.buckets.clear();
  state.feed = state.feed.filter(matches);
  state.feedDirty = true;
  state.feedReset = true;
  const subscription = subscribe(streamOptions(from));
  subscription.onState((s) => {
    if (state.subscription !== subscription) return;
    state.connection = s;
    if (s === 'unauthorized') sessionEnded();
    scheduleRender();
  });
  subscription.onBatch(() => {
    state.frames += 1;
  });
  subscription.onEvent((event) => receive(event));
  subscription.onError((error) => {
    // An ended session is shown on the page (the 'unauthorized' state above), not logged.
    if (!['token_expired', 'token_required', 'invalid_token'].includes(error.code)) console.error(error);
  });
  state.subscription = subscription;
  scheduleRender();
}

function receive(event) {
  state.received += 1;
  state.lastPosition = event.position;
  const second = Math.floor(Date.parse(event.timestamp) / 1000);
  let bucket = state.buckets.get(second);
  if (!bucket) state.buckets.set(second, (bucket = new Map()));
  bucket.set(event.type, (bucket.get(event.type) || 0) + 1);
  if (!state.types.has(event.type)) state.types.add(event.type);
  const site = event.data && typeof event.data === 'object' ? event.data.site : undefined;
  if (typeof site === 'string') state.sites.add(site);
  const path = event.data && typeof event.data === 'object' ? event.data.path : undefined;
  if (typeof path === 'string' && state.pages.size < 500) state.pages.add(path);
  state.feed.push(event);
  if (state.feed.length > FEED_SIZE * 4) state.feed.splice(0, state.feed.length - FEED_SIZE);
  state.feedDirty = true;
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// The projections' numbers

function statsQuery() {
  const params = new URLSearchParams();
  if (state.filter.site) params.set('site', state.filter.site);
  params.set('from', new Date(Date.now() - STATS_WINDOW_MINUTES * 60_000).toISOString());
  return params;
}

async function loadStats() {
  try {
    const response = await fetch(`/api/stats?${statsQuery()}`);
    if (response.status === 401) sessionEnded();
    if (response.ok) acceptStats(await response.json());
  } catch (err) {
    // The live stream below retries by itself; a failed first load only delays the numbers.
    console.warn('FlightDeck: cannot load stats yet', err);
  }
}

function connectStats() {
  if (state.statsSource) state.statsSource.close();
  const params = statsQuery();
  params.delete('from');
  params.set('minutes', String(STATS_WINDOW_MINUTES));
  const source = new EventSource(`/api/stats/stream?${params}`);
  source.onmessage = (message) => {
    try {
      acceptStats(JSON.parse(message.data));
    } catch (err) {
      console.warn('FlightDeck: bad stats frame', err);
    }
  };
  // The server's last frame when the session's token expires: the stream ends for good.
  source.addEventListener('token-expired', () => {
    if (state.statsSource === source) sessionEnded();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // EventSource hides the status: a 401 means the session is over, anything else is retried.
      fetch(`/api/stats?${statsQuery()}`, { cache: 'no-store' })
        .then((response) => {
          if (response.status === 401) sessionEnded();
        })
        .catch(() => {})
        .finally(() => {
          if (!state.sessionExpired) {
            setTimeout(() => state.statsSource === source && connectStats(), 2000 + Math.random() * 1000);
          }
        });
    }
  };
  state.statsSource = source;
}

/** The session is over: stop every live source and say how to get back in. */
function sessionEnded() {
  if (state.sessionExpired) return;
  state.sessionExpired = true;
  if (state.statsSource) state.statsSource.close();
  state.statsSource = null;
  state.subscription?.close();
  state.connection = 'unauthorized';
  $('session-expired').hidden = false;
  scheduleRender();
}

function acceptStats(stats) {
  state.stats = normalizeStats(stats);
  for (const site of state.stats.sites) state.sites.add(site);
  state.statsDirty = true;
  scheduleRender();
}

/** Reads the stats API's answer into the shape the page draws. */
function normalizeStats(s) {
  const list = (value, key) =>
    Array.isArray(value)
      ? value.map((row) => ({ name: String(row[key] ?? row.name ?? ''), count: Number(row.count ?? row.views ?? 0) }))
      : Object.entries(value || {}).map(([name, count]) => ({ name, count: Number(count) }));
  return {
    totals: s.totals || s.eventsByType || {},
    pages: list(s.pageViews || s.pages, 'path'),
    interactions: list(s.interactions, 'element'),
    forms: list(s.formSubmissions || s.forms, 'form'),
    uniqueSessions: s.uniqueSessions ?? s.sessions?.unique ?? null,
    activeSessions: s.activeSessions ?? s.sessions?.active ?? null,
    sites: Array.isArray(s.sites) ? s.sites.map((x) => (typeof x === 'string' ? x : x.site)).filter(Boolean) : [],
    position: s.position || null,
  };
}

// ---------------------------------------------------------------------------------------------
// Drawing

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

let lastFeedRender = -Infinity;
let feedTimer = null;

function render() {
  renderConnection();
  if (state.feedDirty) {
    const wait = lastFeedRender + FEED_INTERVAL_MS - performance.now();
    if (wait <= 0) {
      lastFeedRender = performance.now();
      renderFeed();
    } else if (feedTimer === null) {
      feedTimer = setTimeout(() => {
        feedTimer = null;
        scheduleRender();
      }, wait);
    }
  }
  if (state.statsDirty) {
    renderStats();
    renderCounters();
    // The log position the drawn numbers include (what a reader of the page, or a test, can
    // match against the log; the state object runs one frame ahead of the page).
    setData($('counters'), 'position', state.stats.position ?? '');
  }
}

/** Sets a text or attribute only when it changes: an unchanged write still invalidates layout. */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}
function setData(element, key, value) {
  if (element.dataset[key] !== value) element.dataset[key] = value;
}

function renderConnection() {
  const box = $('connection');
  setData(box, 'state', state.connection);
  // Where the subscription resumes after a reconnect: the last event handed out, or over
  // WebSocket the start position the server reported.
  const resumeAt = state.subscription?.lastPosition ?? null;
  setData(box, 'resume', resumeAt ?? 'now');
  const resume = resumeAt ? ` after …${shortPosition(resumeAt)}` : ' from now';
  const text = {
    connecting: 'connecting…',
    open: 'live',
    reconnecting: `reconnecting — resumes${resume}`,
    closed: 'disconnected',
    unauthorized: 'session expired',
  }[state.connection] || state.connection;
  setText($('connection-text'), text);
  const title = resumeAt ? `resumes after position ${resumeAt}` : 'no event received yet: resumes from now';
  if (box.title !== title) box.title = title;
  setText($('position'), state.lastPosition ? `position ${state.lastPosition}` : '');
}

/** The significant end of a position (its leading digits are mostly zeros). */
function shortPosition(position) {
  return position.replace(/^0+/, '').slice(-12);
}

function rateOf(type, seconds = 10) {
  const now = Math.floor(Date.now() / 1000);
  let n = 0;
  for (let s = now - seconds; s < now; s++) {
    const bucket = state.buckets.get(s);
    if (!bucket) continue;
    if (type) n += bucket.get(type) || 0;
    else for (const v of bucket.values()) n += v;
  }
  return n / seconds;
}

function renderCounters() {
  const host = $('counters');
  const totals = state.stats ? state.stats.totals : {};
  const cards = [['total', 'All events (last hour)', Object.values(totals).reduce((a, b) => a + Number(b), 0), rateOf(null)]];
  for (const type of TRACKED) cards.push([type, LABELS[type], totals[type] ?? 0, rateOf(type)]);
  for (const [type, count] of Object.entries(totals)) {
    if (!TRACKED.includes(type)) cards.push([type, type, count, rateOf(type)]);
  }
  if (host.children.length !== cards.length) {
    host.replaceChildren(...cards.map(([key]) => {
      const card = document.createElement('div');
      card.className = `counter ${key}`;
      card.dataset.type = key;
      card.innerHTML = '<div class="value">0</div><div class="label"></div><div class="rate"></div>';
      return card;
    }));
  }
  cards.forEach(([key, label, count, rate], i) => {
    const card = host.children[i];
    if (card.className !== `counter ${key}`) card.className = `counter ${key}`;
    setData(card, 'type', key);
    setData(card, 'count', String(count));
    setText(card.querySelector('.value'), Number(count).toLocaleString());
    setText(card.querySelector('.label'), label);
    setText(card.querySelector('.rate'), `${rate.toFixed(1)} /s now`);
  });
}

function renderTop(tableId, rows) {
  const body = $(tableId).tBodies[0];
  const sorted = [...rows].sort((a, b) => b.count - a.count).slice(0, 8);
  if (sorted.length === 0) {
    const row = document.createElement('tr');
    row.className = 'empty';
    row.innerHTML = '<td>nothing yet</td>';
    body.replaceChildren(row);
    return;
  }
  const max = sorted[0].count || 1;
  body.replaceChildren(...sorted.map(({ name, count }) => {
    const row = document.createElement('tr');
    row.dataset.name = name;
    row.dataset.count = String(count);
    const nameCell = document.createElement('td');
    nameCell.className = 'name';
    nameCell.textContent = name || '(none)';
    nameCell.title = name;
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.style.width = `${Math.max(2, (100 * count) / max)}%`;
    nameCell.append(bar);
    const countCell = document.createElement('td');
    countCell.className = 'n';
    countCell.textContent = count.toLocaleString();
    row.append(nameCell, countCell);
    return row;
  }));
}

function renderStats() {
  state.statsDirty = false;
  const stats = state.stats;
  renderTop('top-pages', stats.pages);
  renderTop('top-interactions', stats.interactions);
  renderTop('top-forms', stats.forms);
  $('active-sessions').textContent = stats.activeSessions ?? '–';
  $('unique-sessions').textContent = stats.uniqueSessions ?? '–';
  $('stats-window').textContent = `last ${STATS_WINDOW_MINUTES} min`;
  refreshOptions();
}

function refreshOptions() {
  fillSelect($('filter-type'), state.types, 'all types');
  fillSelect($('filter-site'), state.sites, 'all sites');
  const list = $('known-pages');
  if (list.children.length !== state.pages.size) {
    list.replaceChildren(...[...state.pages].sort().map((p) => Object.assign(document.createElement('option'), { value: p })));
  }
}

function fillSelect(select, values, allLabel) {
  if (select.options.length === values.size + 1) return;
  const current = select.value;
  select.replaceChildren(
    Object.assign(document.createElement('option'), { value: '', textContent: allLabel }),
    ...[...values].sort().map((v) => Object.assign(document.createElement('option'), { value: v, textContent: v })),
  );
  select.value = current;
}

function summary(event) {
  const d = event.data && typeof event.data === 'object' ? event.data : {};
  switch (event.type) {
    case 'PageViewed':
      return `${d.path ?? ''}${d.title ? ` — ${d.title}` : ''}`;
    case 'ElementInteraction':
      return `${d.element ?? ''}${d.path ? ` on ${d.path}` : ''}`;
    case 'FormSubmitted':
      return `${d.form ?? ''}${Array.isArray(d.fields) ? ` (${d.fields.length} field${d.fields.length === 1 ? '' : 's'})` : ''}`;
    default:
      return JSON.stringify(event.data).slice(0, 120);
  }
}

/**
 * Shows the latest FEED_SIZE events, newest first. Rows already shown stay in place (new ones are
 * added on top, old ones dropped at the bottom), so an opened row keeps its details and the
 * browser lays out only the new rows; after a filter change the list is rebuilt.
 */
function renderFeed() {
  state.feedDirty = false;
  const latest = state.feed.slice(-FEED_SIZE).reverse();
  const list = $('feed');
  const top = list.firstElementChild?.dataset.position;
  const kept = top === undefined || state.feedReset ? -1 : latest.findIndex((event) => event.position === top);
  state.feedReset = false;
  if (kept < 0) {
    list.replaceChildren(...latest.map(feedItem));
  } else {
    list.prepend(...latest.slice(0, kept).map(feedItem));
    while (list.children.length > latest.length) list.lastElementChild.remove();
  }
  setText($('feed-note'), `${state.received.toLocaleString()} received since the page opened`);
}

function feedItem(event) {
  const item = document.createElement('li');
  item.dataset.position = event.position;
  item.dataset.id = event.id;
  item.dataset.type = event.type;
  if (typeof event.data?.path === 'string') item.dataset.path = event.data.path;
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = timeFormat.format(new Date(event.timestamp));
  const type = document.createElement('span');
  type.className = `type ${event.type}`;
  type.textContent = event.type;
  const text = document.createElement('span');
  text.className = 'summary';
  text.textContent = summary(event);
  const stream = document.createElement('span');
  stream.className = 'stream mono';
  stream.textContent = event.stream;
  item.append(time, type, text, stream);
  item.addEventListener('click', () => toggleDetails(item, event));
  return item;
}

/** One formatter for every row (toLocaleTimeString builds a new one per call). */
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit', second: '2-digit' });

function toggleDetails(item, event) {
  const open = item.querySelector('pre');
  if (open) return open.remove();
  const pre = document.createElement('pre');
  pre.textContent = JSON.stringify(event, null, 2);
  item.append(pre);
}

// ---------------------------------------------------------------------------------------------
// The chart: events per second since the page opened, up to the last two minutes, one line per type.

let chart = null;
const SERIES = [...TRACKED, 'other'];

function chartData() {
  const now = Math.floor(Date.now() / 1000);
  const xs = [];
  const ys = SERIES.map(() => []);
  // What the page has seen (it has no history before it opened), within the window.
  const first = Math.max(now - WINDOW_SECONDS, Math.min(OPENED_SECOND, now - MIN_WINDOW_SECONDS));
  for (let s = first; s < now; s++) {
    xs.push(s);
    const bucket = state.buckets.get(s);
    SERIES.forEach((type, i) => {
      if (!bucket) return ys[i].push(0);
      if (type !== 'other') return ys[i].push(bucket.get(type) || 0);
      let other = 0;
      for (const [t, v] of bucket) if (!TRACKED.includes(t)) other += v;
      ys[i].push(other);
    });
  }
  for (const s of state.buckets.keys()) if (s < now - WINDOW_SECONDS - 5) state.buckets.delete(s);
  return [xs, ...ys];
}

function makeChart() {
  const host = $('chart');
  const opts = {
    width: host.clientWidth || 800,
    height: 220,
    cursor: { drag: { x: false, y: false } },
    legend: { live: false },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(5, Math.ceil(max * 1.15))] } },
    axes: [
      { stroke: '#8a96b0', grid: { stroke: '#222c45' }, ticks: { stroke: '#222c45' } },
      { stroke: '#8a96b0', grid: { stroke: '#222c45' }, ticks: { stroke: '#222c45' } },
    ],
    series: [
      {},
      ...SERIES.map((type) => ({
        label: LABELS[type] || 'Other',
        stroke: COLORS[type] || COLORS.other,
        width: 2,
        points: { show: false },
      })),
    ],
  };
  chart = new uPlot(opts, chartData(), host);
  new ResizeObserver(() => chart.setSize({ width: host.clientWidth, height: 220 })).observe(host);
}

function tick() {
  if (chart) chart.setData(chartData());
  setText($('rate-now'), `${rateOf(null).toFixed(1)} /s over the last 10 s`);
  renderCounters();
}

// ---------------------------------------------------------------------------------------------
// Start

function applyFilters(event) {
  event?.preventDefault();
  if (state.sessionExpired) return;
  state.filter = {
    site: $('filter-site').value,
    type: $('filter-type').value,
    page: $('filter-page').value.trim(),
  };
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(state.filter)) if (value) params.set(key, value);
  if (state.delivery.transport !== 'sse') params.set('transport', state.delivery.transport);
  if (!state.delivery.batch) params.set('batch', 'off');
  history.replaceState(null, '', params.size ? `?${params}` : location.pathname);
  connectEvents();
  loadStats();
  connectStats();
}

function start() {
  const params = new URLSearchParams(location.search);
  state.filter = { site: params.get('site') || '', type: params.get('type') || '', page: params.get('page') || '' };
  state.delivery = { transport: params.get('transport') === 'ws' ? 'ws' : 'sse', batch: params.get('batch') !== 'off' };
  if (state.filter.site) state.sites.add(state.filter.site);
  if (state.filter.type) state.types.add(state.filter.type);
  refreshOptions();
  $('filter-site').value = state.filter.site;
  $('filter-type').value = state.filter.type;
  $('filter-page').value = state.filter.page;
  $('filters').addEventListener('submit', applyFilters);
  $('filter-type').addEventListener('change', applyFilters);
  $('filter-site').addEventListener('change', applyFilters);
  makeChart();
  connectEvents();
  loadStats();
  connectStats();
  render();
  setInterval(tick, 1000);
  // For tests and the curious: the page's live state.
  window.flightdeckDashboard = state;
}

start();
