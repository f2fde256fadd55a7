// The browser's one connection to the tickmesh gateways (docs/GATEWAY.md, protocol v1).
//
// Rules:
// - A session is a token from POST /api/login, kept in `storage` so a page reload keeps it.
//   A token the gateway refuses (close 4001, or a fatal `auth` error) is forgotten and the
//   connection goes `offline` with an `auth` event: the page asks for a login again.
// - The connection opens `/ws` on one of the gateway URLs it knows, sends `hello` with the
//   token and, per subscribed stream, the (epoch, seq) of the last item applied, and is
//   `live` at `welcome`. A failed attempt or a dropped connection moves to the next URL and
//   waits `backoffDelay(failures)` (jittered exponential, a pure function) first.
// - Heartbeats: a `ping` after `heartbeat_ms` without sending; a socket silent for
//   3 × `heartbeat_ms` is closed and reconnected.
// - Stream items are applied in order; an item whose seq is not above the last one held for
//   its stream (same epoch) is a duplicate: dropped and counted, never handed on. `subscribed`
//   with `reset` gives handlers a `{kind: "reset"}` item; a `snapshot` item replaces the
//   stream's state and its position.
// - Orders: `place`, `cancel` and `replace` make the client order id, keep the request in
//   `storage` until it is acknowledged or finally rejected, and send every kept request on
//   each `welcome`; the order path's idempotency by (account, client order id) makes a resend
//   the same order. A retryable reject keeps the request and sends it again after a backoff.
// Resume positions live in memory only: after a reload the handlers hold nothing, so every
// stream starts from a snapshot; the session and the order queue are what a reload keeps.

export const Status = Object.freeze({
  CONNECTING: 'connecting',
  LIVE: 'live',
  RECONNECTING: 'reconnecting',
  OFFLINE: 'offline',
});

/** The default reconnect policy: 100 ms doubling to 2 s, each delay jittered into [d/2, d]. */
export const BACKOFF = Object.freeze({ baseMs: 100, maxMs: 2000, factor: 2, jitter: 0.5 });

/**
 * How long to wait before attempt number `failures` + 1 (after `failures` ≥ 1 failed ones):
 * `min(maxMs, baseMs × factor^(failures-1))` reduced by up to `jitter` of itself at random,
 * so clients that lost the same gateway do not all come back in the same millisecond.
 */
export function backoffDelay(failures, policy = BACKOFF, random = Math.random) {
  const { baseMs, maxMs, factor, jitter } = { ...BACKOFF, ...policy };
  if (failures <= 0) return 0;
  const full = Math.min(maxMs, baseMs * factor ** (failures - 1));
  return full * (1 - jitter * random());
}

/** Web Storage in memory, for node and for pages without localStorage. */
export class MemoryStorage {
  constructor() {
    this._items = new Map();
  }
  getItem(key) {
    return this._items.has(key) ? this._items.get(key) : null;
  }
  setItem(key, value) {
    this._items.set(key, String(value));
  }
  removeItem(key) {
    this._items.delete(key);
  }
}

/** The order queue is full: the request was refused, never dropped (`queued`, `limit`). */
export class QueueFull extends Error {
  constructor(queued, limit) {
    super(`${queued} order requests are waiting for a gateway (at most ${limit}): not queued`);
    this.name = 'QueueFull';
    this.queued = queued;
    this.limit = limit;
  }
}

export class AuthError extends Error {
  constructor(message, status = 401) {
    super(message);
    this.name = 'AuthError';
    this.status = status;
  }
}

const SYSTEM_CLOCK = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle),
});

const OPEN = 1; // WebSocket.OPEN
const AUTH_CLOSE_CODE = 4001;
const ORDER_OPS = new Set(['place', 'cancel', 'replace']);
// Order requests unanswered on one connection at most: the gateway serves 64 of a connection's
// requests at once and answers `busy` past that; the rest of the queue waits for answers.
const MAX_IN_FLIGHT = 32;
// `error` codes for an order request that a resend of the same request may get through.
const RETRYABLE_ERRORS = new Set(['busy', 'RATE_LIMITED', 'unavailable']);

/** Streams whose newest item is all a client needs: no history to resume or reload. */
export function isLatestValue(stream) {
  return stream === 'status' || stream.startsWith('ticks:');
}

function wsUrl(httpUrl) {
  return `${httpUrl.replace(/\/+$/, '').replace(/^http/, 'ws')}/ws`;
}

function randomId(random) {
  return Math.floor(random() * 36 ** 6).toString(36).padStart(6, '0');
}

export class Connection {
  /**
   * `urls`: the gateways' base URLs (http://host:port), tried in turn. Injected for node and
   * tests: `WebSocket` (a class like the browser's), `fetch`, `storage` (Web Storage),
   * `clock` ({now, setTimeout, clearTimeout}), `random`. `connectTimeoutMs`: how long an
   * attempt may take to reach `welcome`; `maxQueued`: order requests kept at most (past it
   * `place`, `cancel` and `replace` throw QueueFull).
   */
  constructor({
    urls,
    WebSocket = globalThis.WebSocket,
    fetch = globalThis.fetch,
    storage = globalThis.localStorage ?? new MemoryStorage(),
    clock = SYSTEM_CLOCK,
    random = Math.random,
    backoff = BACKOFF,
    connectTimeoutMs = 5000,
    maxQueued = 1000,
    client = 'tickmesh-web',
    storagePrefix = 'tickmesh.',
  } = {}) {
    if (!urls || urls.length === 0) throw new TypeError('Connection needs at least one gateway URL');
    this.urls = [...new Set(urls.map((u) => u.replace(/\/+$/, '')))];
    this._WebSocket = WebSocket;
    this._fetch = (...args) => fetch(...args); // a bare window.fetch called as a method throws "Illegal invocation"
    this._storage = storage;
    this._clock = clock;
    this._random = random;
    this._backoff = backoff;
    this._connectTimeoutMs = connectTimeoutMs;
    this._maxQueued = maxQueued;
    this._client = client;
    this._prefix = storagePrefix;

    this._listeners = new Map(); // event -> Set(fn)
    this._streams = new Map(); // stream -> {handlers: Set, epoch, seq}
    this._urlIndex = 0;
    this._socket = null;
    this._running = false;
    this._everLive = false;
    this._failures = 0;
    this._retryTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
    this._resendTimer = null;
    this._heartbeatMs = 5000;
    this._lastHeard = 0;
    this._lastSent = 0;
    this._requestId = 0;
    this._inflight = new Map(); // request id -> client_order_id
    this._pendingSubscribes = []; // streams to subscribe after welcome (no position held)
    this.status = Status.OFFLINE;
    this.url = null; // the gateway in use (or being tried)
    this.welcome = null;
    this.rttMs = null;
    this.counters = {
      attempts: 0, // sockets opened
      reconnects: 0, // times live again after having been live
      duplicates: 0, // items dropped: seq not above the last held
      resets: 0, // streams the gateway could not resume
      snapshots: 0, // snapshot items applied
      items: 0, // items handed to handlers
      failovers: 0, // moves to another gateway URL
      queued: this._loadQueue().length, // order requests not yet acknowledged
      lastOutageMs: null, // a live connection lost → live again (on any gateway), the last time
    };
    this._lostAt = null;
  }

  // ---- events -----------------------------------------------------------------------------

  /** Call `fn(detail)` on `event`; returns a function that removes it. Events: `status`
   * ({status, url}), `welcome`, `auth` (log in again), `order_ack`, `order_reject`,
   * `queue` (the order queue changed), `error` (an `error` frame), `counters`. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, detail) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A listener's bug must not stop the others nor the connection: report it.
        console.error(`tickmesh: a ${event} listener failed`, err);
      }
    }
  }

  _setStatus(status) {
    if (this.status === status && status !== Status.CONNECTING) return;
    this.status = status;
    this._emit('status', { status, url: this.url });
  }

  // ---- storage ----------------------------------------------------------------------------

  _read(key, fallback) {
    const raw = this._storage.getItem(this._prefix + key);
    if (raw === null) return fallback;
    try {
      return JSON.parse(raw);
    } catch {
      return fallback;
    }
  }

  _write(key, value) {
    if (value === null) this._storage.removeItem(this._prefix + key);
    else this._storage.setItem(this._prefix + key, JSON.stringify(value));
  }

  /** `{token, user, accounts}` of the session kept in storage, or null. */
  get session() {
    return this._read('session', null);
  }

  // ---- HTTP -------------------------------------------------------------------------------

  /** The gateway URLs starting at the one in use. */
  _urlsFromCurrent() {
    return this.urls.map((_, i) => this.urls[(this._urlIndex + i) % this.urls.length]);
  }

  async _post(path, body) {
    let lastError = null;
    for (const base of this._urlsFromCurrent()) {
      let response;
      try {
        response = await this._fetch(`${base}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
      } catch (err) {
        lastError = err; // this gateway is down: try the next
        continue;
      }
      const json = await response.json().catch(() => ({}));
      return { base, response, json };
    }
    throw new Error(`no gateway answered ${path}: ${lastError?.message ?? lastError}`);
  }

  /**
   * Log in with `{user, password}` or `{api_key}`; keeps the session in storage and connects.
   * Wrong credentials → AuthError. Resolves to `{user, accounts}`.
   */
  async login(credentials) {
    const { base, response, json } = await this._post('/api/login', credentials);
    if (response.status === 401 || response.status === 403) {
      throw new AuthError(json.message ?? 'wrong user or password', response.status);
    }
    if (!response.ok || typeof json.token !== 'string') {
      throw new Error(`login failed: HTTP ${response.status} ${json.message ?? ''}`.trim());
    }
    this._urlIndex = this.urls.indexOf(base);
    this._write('session', { token: json.token, user: json.user, accounts: json.accounts ?? [] });
    await this.learnGateways(base);
    this.start();
    return { user: json.user, accounts: json.accounts ?? [] };
  }

  /** Add the gateways `/api/gateways` lists to the URLs failed over between. */
  async learnGateways(base) {
    try {
      const response = await this._fetch(`${base}/api/gateways`);
      if (!response.ok) return;
      const { gateways } = await response.json();
      if (!Array.isArray(gateways)) return;
      for (const url of gateways.map((u) => u.replace(/\/+$/, ''))) {
        if (!this.urls.includes(url)) this.urls.push(url);
      }
    } catch {
      // Optional: the URLs given at construction still work.
    }
  }

  /** End the session everywhere and forget it (the order queue is kept for the next login). */
  async logout() {
    const session = this.session;
    this._write('session', null);
    this.stop();
    if (session) {
      try {
        await this._post('/api/logout', { token: session.token });
      } catch {
        // The token is forgotten here either way; the gateway's TTL ends it.
      }
    }
  }

  // ---- the socket's life ------------------------------------------------------------------

  /** Connect (if a session is kept) and stay connected until `stop()`. */
  start() {
    if (!this.session) {
      this._setStatus(Status.OFFLINE);
      return false;
    }
    if (this._running) return true;
    this._running = true;
    this._open();
    return true;
  }

  /** Close the socket and stop reconnecting. */
  stop() {
    this._running = false;
    this._lostAt = null;
    this._clearTimers();
    this._dropSocket(1000, 'client stopped');
    this._setStatus(Status.OFFLINE);
  }

  _clearTimers() {
    for (const name of ['_retryTimer', '_connectTimer', '_heartbeatTimer', '_resendTimer']) {
      if (this[name] !== null) this._clock.clearTimeout(this[name]);
      this[name] = null;
    }
  }

  _dropSocket(code, reason) {
    const socket = this._socket;
    this._socket = null;
    this.welcome = null;
    this._inflight.clear();
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close(code, reason);
    } catch {
      // Already closed.
    }
  }

  _open() {
    this.url = this.urls[this._urlIndex];
    this._setStatus(Status.CONNECTING);
    this.counters.attempts += 1;
    let socket;
    try {
      socket = new this._WebSocket(wsUrl(this.url));
    } catch {
      this._failed();
      return;
    }
    this._socket = socket;
    socket.onopen = () => this._onOpen(socket);
    socket.onmessage = (event) => this._onMessage(socket, event.data);
    socket.onclose = (event) => this._onClose(socket, event?.code);
    socket.onerror = () => {}; // a close follows; that is where the failure is handled
    this._connectTimer = this._clock.setTimeout(() => {
      this._connectTimer = null;
      if (this._socket === socket && !this.welcome) this._failed();
    }, this._connectTimeoutMs);
  }

  _onOpen(socket) {
    if (socket !== this._socket) return;
    const session = this.session;
    if (!session) {
      this.stop();
      return;
    }
    const streams = {};
    for (const [name, s] of this._streams) {
      if (s.epoch !== null && s.seq !== null) streams[name] = [s.epoch, s.seq];
      else streams[name] = null;
    }
    // Streams without a position are asked for by `subscribe` after welcome (a snapshot).
    const held = Object.fromEntries(Object.entries(streams).filter(([, v]) => v !== null));
    this._lastHeard = this._clock.now();
    this._send({ op: 'hello', v: 1, token: session.token, streams: held, client: this._client });
    this._pendingSubscribes = Object.keys(streams).filter((k) => streams[k] === null);
  }

  _onClose(socket, code) {
    if (socket !== this._socket) return;
    this._socket = null;
    if (code === AUTH_CLOSE_CODE) {
      this._authLost('the gateway refused the session');
      return;
    }
    this._failed();
  }

  _authLost(message) {
    this._write('session', null);
    this.stop();
    this._emit('auth', { message });
  }

  /** This attempt failed or a live connection dropped: next URL, after a backoff. */
  _failed() {
    const wasLive = Boolean(this.welcome);
    if (wasLive) this._lostAt = this._clock.now();
    this._clearTimers();
    this._dropSocket(1000, 'reconnecting');
    if (!this._running) return;
    this._failures = wasLive ? 1 : this._failures + 1;
    if (this.urls.length > 1) {
      this._urlIndex = (this._urlIndex + 1) % this.urls.length;
      this.counters.failovers += 1;
    }
    this.url = this.urls[this._urlIndex];
    this._setStatus(Status.RECONNECTING);
    const delay = backoffDelay(this._failures, this._backoff, this._random);
    this._retryTimer = this._clock.setTimeout(() => {
      this._retryTimer = null;
      if (this._running) this._open();
    }, delay);
  }

  _send(frame) {
    const socket = this._socket;
    if (!socket || socket.readyState !== OPEN) return false;
    socket.send(JSON.stringify(frame));
    this._lastSent = this._clock.now();
    return true;
  }

  // ---- heartbeats -------------------------------------------------------------------------

  _armHeartbeat() {
    if (this._heartbeatTimer !== null) this._clock.clearTimeout(this._heartbeatTimer);
    const tick = Math.max(10, this._heartbeatMs / 4);
    this._heartbeatTimer = this._clock.setTimeout(() => {
      this._heartbeatTimer = null;
      if (!this._socket || !this.welcome) return;
      const now = this._clock.now();
      if (now - this._lastHeard >= 3 * this._heartbeatMs) {
        this._failed(); // silent gateway: treat as dead
        return;
      }
      if (now - this._lastSent >= this._heartbeatMs) this._send({ op: 'ping', t: now });
      this._armHeartbeat();
    }, tick);
  }

  // ---- frames from the gateway ------------------------------------------------------------

  _onMessage(socket, data) {
    if (socket !== this._socket) return;
    this._lastHeard = this._clock.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not ours to fix; the gateway only sends JSON
    }
    switch (frame.op) {
      case 'welcome':
        this._onWelcome(frame);
        break;
      case 'subscribed':
        this._onSubscribed(frame);
        break;
      case 'batch':
        for (const item of frame.items ?? []) this._onItem(item);
        this._emit('counters', { ...this.counters });
        break;
      case 'order_ack':
        this._settle(frame, 'order_ack');
        break;
      case 'order_reject':
        this._onReject(frame);
        break;
      case 'pong':
        if (typeof frame.t === 'number') this.rttMs = this._clock.now() - frame.t;
        break;
      case 'error':
        if (frame.code === 'auth') {
          this._authLost(frame.message ?? 'session expired');
          return;
        }
        if (this._inflight.has(frame.id)) {
          // An order request the gateway would not take: the same as its reject.
          this._onReject({
            id: frame.id, client_order_id: this._inflight.get(frame.id), reason: frame.code,
            message: frame.message, retryable: RETRYABLE_ERRORS.has(frame.code),
          });
        }
        this._emit('error', frame);
        if (frame.fatal) this._failed();
        break;
      default:
        break; // heartbeat, unsubscribed: hearing it is enough
    }
  }

  _onWelcome(frame) {
    if (this._connectTimer !== null) this._clock.clearTimeout(this._connectTimer);
    this._connectTimer = null;
    if (this._everLive) this.counters.reconnects += 1;
    if (this._lostAt !== null) this.counters.lastOutageMs = this._clock.now() - this._lostAt;
    this._lostAt = null;
    this._everLive = true;
    this._failures = 0;
    this.welcome = frame;
    this._heartbeatMs = frame.heartbeat_ms > 0 ? frame.heartbeat_ms : 5000;
    this._armHeartbeat();
    for (const stream of this._pendingSubscribes ?? []) this._subscribeFrame(stream);
    this._pendingSubscribes = [];
    this._setStatus(Status.LIVE);
    this._emit('welcome', frame);
    this._flushQueue();
  }

  _onSubscribed(frame) {
    const s = this._streams.get(frame.stream);
    if (!s) return;
    // A latest-value stream (ticks, status) has nothing to reload: its next item replaces
    // whatever is held, so its reset is no news.
    if (frame.reset && !isLatestValue(frame.stream)) {
      this.counters.resets += 1;
      this._deliver(s, { kind: 'reset', stream: frame.stream, epoch: frame.epoch, seq: frame.seq });
    }
    if (frame.mode === 'snapshot' || s.epoch !== frame.epoch) {
      // What comes next replaces what we hold: no position until the snapshot item sets it.
      s.epoch = frame.epoch;
      s.seq = null;
    }
  }

  _onItem(item) {
    const s = this._streams.get(item.stream);
    if (!s) return; // unsubscribed meanwhile
    if (item.kind === 'snapshot') {
      s.epoch = item.epoch;
      s.seq = item.seq;
      this.counters.snapshots += 1;
    } else {
      if (s.epoch === item.epoch && s.seq !== null && item.seq <= s.seq) {
        this.counters.duplicates += 1;
        return;
      }
      s.epoch = item.epoch;
      s.seq = item.seq;
    }
    if (item.stream === 'orders' && item.kind === 'order') this._seenOrder(item);
    this.counters.items += 1;
    this._deliver(s, item);
  }

  _deliver(s, item) {
    for (const handler of [...s.handlers]) {
      try {
        handler(item);
      } catch (err) {
        console.error(`tickmesh: a handler of ${item.stream} failed`, err);
      }
    }
  }

  // ---- streams ----------------------------------------------------------------------------

  /**
   * Hand every item of `stream` to `handler(item)` in order, duplicates removed: stream items
   * as docs/GATEWAY.md section 4 has them, a `{kind: "snapshot"}` that replaces the state, and
   * a `{kind: "reset"}` when the gateway could not resume. Subscribed again after every
   * reconnect. A handler added to a stream already subscribed gets the items from then on.
   * Returns a function that unsubscribes this handler.
   */
  subscribe(stream, handler) {
    let s = this._streams.get(stream);
    const isNew = !s;
    if (isNew) {
      s = { handlers: new Set(), epoch: null, seq: null };
      this._streams.set(stream, s);
    }
    s.handlers.add(handler);
    if (isNew && this.welcome) this._subscribeFrame(stream);
    return () => this.unsubscribe(stream, handler);
  }

  unsubscribe(stream, handler) {
    const s = this._streams.get(stream);
    if (!s) return;
    s.handlers.delete(handler);
    if (s.handlers.size > 0) return;
    this._streams.delete(stream);
    if (this.welcome) this._send({ op: 'unsubscribe', id: this._nextId(), stream });
  }

  _subscribeFrame(stream) {
    const s = this._streams.get(stream);
    const frame = { op: 'subscribe', id: this._nextId(), stream };
    if (s && s.epoch !== null && s.seq !== null) frame.from = [s.epoch, s.seq];
    this._send(frame);
  }

  /** The (epoch, seq) held per stream: what a resume sends. */
  positions() {
    const out = {};
    for (const [name, s] of this._streams) if (s.seq !== null) out[name] = [s.epoch, s.seq];
    return out;
  }

  _nextId() {
    this._requestId += 1;
    return this._requestId;
  }

  // ---- the order queue --------------------------------------------------------------------

  _loadQueue() {
    const queue = this._read('orders', []);
    return Array.isArray(queue) ? queue : [];
  }

  _saveQueue(queue) {
    this._write('orders', queue);
    this.counters.queued = queue.length;
    this._emit('queue', queue.map((r) => ({ ...r })));
  }

  /** The order requests kept until acknowledged: `{op, client_order_id, ..., state}`. */
  queue() {
    return this._loadQueue();
  }

  /** A client order id unique across reloads: `{client}-{time, base 36}-{counter}`. */
  newClientOrderId() {
    let clientId = this._read('client', null);
    if (!clientId) {
      clientId = randomId(this._random);
      this._write('client', clientId);
    }
    const counter = (this._read('counter', 0) + 1) % 36 ** 4;
    this._write('counter', counter);
    return `${clientId}-${this._clock.now().toString(36)}-${counter.toString(36)}`;
  }

  _defaultAccount() {
    const accounts = this.session?.accounts ?? [];
    return accounts[0];
  }

  _enqueue(request) {
    const queue = this._loadQueue();
    if (queue.length >= this._maxQueued) throw new QueueFull(queue.length, this._maxQueued);
    queue.push({ ...request, state: 'queued', attempts: 0, created_ms: this._clock.now() });
    this._saveQueue(queue);
    this._flushQueue();
    return request.client_order_id;
  }

  /**
   * Place `{symbol, side, type, quantity, price?, account?}`; returns the client order id.
   * The request is kept until the gateway acknowledges or rejects it, across reconnects and
   * reloads.
   */
  place(order) {
    const client_order_id = order.client_order_id ?? this.newClientOrderId();
    const full = { account: order.account ?? this._defaultAccount(), ...order, client_order_id };
    if (full.type !== 'limit') delete full.price;
    return this._enqueue({ op: 'place', client_order_id, order: full });
  }

  /** Cancel the order whose client order id is `target`; returns the request's own id. */
  cancel(target, { account = this._defaultAccount() } = {}) {
    return this._enqueue({ op: 'cancel', client_order_id: this.newClientOrderId(), account, target });
  }

  /** Replace the order `target` with a new quantity and price; returns the request's id. */
  replace(target, { quantity, price, account = this._defaultAccount() }) {
    return this._enqueue({
      op: 'replace', client_order_id: this.newClientOrderId(), account, target, quantity, price,
    });
  }

  _frameOf(request, id) {
    if (request.op === 'place') return { op: 'place', id, order: request.order };
    const frame = {
      op: request.op, id, account: request.account,
      client_order_id: request.client_order_id, target: request.target,
    };
    if (request.op === 'replace') Object.assign(frame, { quantity: request.quantity, price: request.price });
    return frame;
  }

  /** Send every kept request not yet answered on this connection. */
  _flushQueue() {
    if (!this.welcome) return;
    const waiting = new Set(this._inflight.values());
    const queue = this._loadQueue();
    const now = this._clock.now();
    let changed = false;
    for (const request of queue) {
      if (this._inflight.size >= MAX_IN_FLIGHT) break;
      if (!ORDER_OPS.has(request.op) || waiting.has(request.client_order_id)) continue;
      if (request.retry_at && request.retry_at > now) continue;
      const id = this._nextId();
      if (!this._send(this._frameOf(request, id))) break;
      this._inflight.set(id, request.client_order_id);
      request.state = 'sent';
      request.attempts = (request.attempts ?? 0) + 1;
      delete request.retry_at;
      changed = true;
    }
    if (changed) this._saveQueue(queue);
    this._armResend();
  }

  _removeRequest(clientOrderId) {
    const queue = this._loadQueue();
    const i = queue.findIndex((r) => r.client_order_id === clientOrderId);
    if (i < 0) return null;
    const [request] = queue.splice(i, 1);
    this._saveQueue(queue);
    return request;
  }

  _settle(frame, event) {
    this._inflight.delete(frame.id);
    const request = this._removeRequest(frame.client_order_id);
    // An ack for a request already settled (its order seen on the stream first) says nothing new.
    if (request || event === 'order_reject') this._emit(event, { ...frame, request });
    this._flushQueue(); // room for one more in flight
  }

  _onReject(frame) {
    if (!frame.retryable) {
      this._settle(frame, 'order_reject');
      return;
    }
    // Retryable (BUSY, RATE_LIMITED, TIMEOUT): the same request again later, same id.
    this._inflight.delete(frame.id);
    const queue = this._loadQueue();
    const request = queue.find((r) => r.client_order_id === frame.client_order_id);
    if (request) {
      request.state = 'retrying';
      request.reason = frame.reason;
      request.retry_at = this._clock.now() + backoffDelay(request.attempts ?? 1, this._backoff, this._random);
      this._saveQueue(queue);
    }
    this._emit('order_retry', { ...frame });
    this._flushQueue(); // its slot in flight is free for the others meanwhile
  }

  /** A timer for the earliest retry still in the future; past-due ones go out with the next
   * flush that has room (an answer, a welcome), never by a timer that would spin. */
  _armResend() {
    if (this._resendTimer !== null || !this.welcome) return;
    const now = this._clock.now();
    const future = this._loadQueue().map((r) => r.retry_at).filter((at) => at && at > now);
    if (future.length === 0) return;
    this._resendTimer = this._clock.setTimeout(() => {
      this._resendTimer = null;
      this._flushQueue();
    }, Math.min(...future) - now);
  }

  /** An order write on the stream shows its place went through, even if the ack was lost. */
  _seenOrder(item) {
    const order = item.order ?? item;
    const queue = this._loadQueue();
    const request = queue.find((r) => r.op === 'place' && r.client_order_id === order.client_order_id &&
      r.order.account === order.account);
    if (!request) return;
    this._removeRequest(request.client_order_id);
    this._emit('order_ack', {
      id: null, client_order_id: order.client_order_id, order_id: order.order_id,
      state: order.state, request,
    });
  }
}
