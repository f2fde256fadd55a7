// Test doubles for the node tests (kept out of web/test/, where node's runner would run them):
// a manual clock, a WebSocket class whose instances the test drives as the gateway would, and
// a small node:http server answering /api/* and /udf/* per docs/GATEWAY.md.

import http from 'node:http';

/** A clock whose timers run only when the test advances it, in due order. */
export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this._timers = new Map();
    this._next = 1;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = this._next++;
    this._timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(id) {
    this._timers.delete(id);
  }
  /** Move time forward by `ms`, running every timer that falls due, earliest first. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let due = null;
      for (const [id, timer] of this._timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) due = [id, timer];
      }
      if (due === null) break;
      this._timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].fn();
    }
    this.t = end;
  }
  pending() {
    return this._timers.size;
  }
}

/** A WebSocket class; `FakeSocket.instances` are the sockets opened, newest last. */
export function fakeSocketClass() {
  class FakeSocket {
    static instances = [];
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closed = null;
      FakeSocket.instances.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000, reason = '') {
      this.closed = { code, reason };
      this.readyState = 3;
    }
    // ---- the gateway's side ----
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code });
    }
    framesOf(op) {
      return this.sent.filter((f) => f.op === op);
    }
    static last() {
      return FakeSocket.instances[FakeSocket.instances.length - 1];
    }
  }
  return FakeSocket;
}

/** A welcome frame as the gateway sends it. */
export function welcome(extra = {}) {
  return {
    op: 'welcome', v: 1, gateway: 'gw-test', session: 'pub-1', user: 'alice',
    accounts: ['ACC-ALICE'], heartbeat_ms: 1000,
    limits: { max_message_bytes: 65536, max_subscriptions: 64, orders_per_s: 20 }, ...extra,
  };
}

/**
 * Bars of a synthetic history at one resolution (`step` seconds), oldest first: from
 * `start` to `end` (exclusive) with the bars in `gap` = [from, to) missing.
 */
export function syntheticBars({ start, end, step, gap = null }) {
  const bars = [];
  for (let t = start, i = 0; t < end; t += step, i += 1) {
    if (gap && t >= gap[0] && t < gap[1]) continue;
    const open = 1.1 + (i % 17) * 0.0001;
    bars.push({ time: t, open, high: open + 0.0005, low: open - 0.0004, close: open + 0.0001, volume: 10 + (i % 5) });
  }
  return bars;
}

/**
 * Start an HTTP server on a free loopback port serving the gateway's HTTP contract:
 * /api/login (users: {name: password}), /api/gateways, /api/logout, /udf/config, /udf/symbols,
 * /udf/search, /udf/time, /udf/history (over `history`: {"SYM:RES": bars}; `byRange`: a server
 * that answers from/to and ignores countback, so a gap is a `no_data` with `nextTime`). Resolves to
 * `{url, requests, close()}`; `requests` lists every request's path and query.
 */
export async function startGatewayHttp({
  users = { alice: 'pw' }, history = {}, now = 0, gateways = null, maxPerAnswer = Infinity,
  byRange = false,
} = {}) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const q = Object.fromEntries(url.searchParams);
    requests.push({ method: req.method, path: url.pathname, query: q });
    let body = '';
    for await (const chunk of req) body += chunk;
    const json = (status, value) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(value));
    };
    switch (url.pathname) {
      case '/api/login': {
        const creds = JSON.parse(body || '{}');
        if (users[creds.user] !== undefined && users[creds.user] === creds.password) {
          return json(200, { token: `tok-${creds.user}`, user: creds.user, accounts: [`ACC-${creds.user.toUpperCase()}`], ttl_s: 3600 });
        }
        return json(401, { error: 'auth_failed', message: 'wrong user or password' });
      }
      case '/api/logout':
        return json(200, { ok: true });
      case '/api/gateways':
        return json(200, { gateways: gateways ?? [address()], self: address() });
      case '/udf/config':
        return json(200, { supported_resolutions: ['1S', '1', '5', '15', '60', '1D'], supports_search: true,
          supports_group_request: false, supports_marks: false, supports_time: true });
      case '/udf/symbols':
        if (!Object.keys(history).some((k) => k.startsWith(`${q.symbol}:`))) {
          return json(200, { s: 'error', errmsg: 'unknown symbol' });
        }
        return json(200, { name: q.symbol, ticker: q.symbol, description: `${q.symbol} spot`, type: 'forex',
          exchange: 'tickmesh', pricescale: 100000, minmov: 1, has_intraday: true, has_seconds: true });
      case '/udf/search':
        return json(200, [...new Set(Object.keys(history).map((k) => k.split(':')[0]))]
          .filter((s) => s.includes((q.query ?? '').toUpperCase()))
          .map((s) => ({ symbol: s, full_name: s, description: s, exchange: 'tickmesh', ticker: s, type: 'forex' })));
      case '/udf/time':
        res.writeHead(200, { 'content-type': 'text/plain' });
        return res.end(String(now));
      case '/udf/history':
        return json(200, historyAnswer(history[`${q.symbol}:${q.resolution}`] ?? [], byRange ? { ...q, countback: undefined } : q, maxPerAnswer));
      default:
        return json(404, { error: 'not_found' });
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = () => `http://127.0.0.1:${server.address().port}`;
  return {
    url: address(),
    requests,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

// /udf/history per section 8: bars with time < to, the last `countback` of them (countback
// wins over from), at most `maxPerAnswer` (a server that pages); none → no_data, with
// nextTime when older bars exist.
function historyAnswer(bars, q, maxPerAnswer) {
  const to = Number(q.to);
  const countback = q.countback ? Number(q.countback) : null;
  let inRange = bars.filter((b) => b.time < to && (countback !== null || b.time >= Number(q.from)));
  if (countback !== null) inRange = inRange.slice(Math.max(0, inRange.length - countback));
  inRange = inRange.slice(Math.max(0, inRange.length - maxPerAnswer));
  if (inRange.length === 0) {
    const older = bars.filter((b) => b.time < to);
    return older.length ? { s: 'no_data', nextTime: older[older.length - 1].time } : { s: 'no_data' };
  }
  return {
    s: 'ok', t: inRange.map((b) => b.time), o: inRange.map((b) => b.open), h: inRange.map((b) => b.high),
    l: inRange.map((b) => b.low), c: inRange.map((b) => b.close), v: inRange.map((b) => b.volume),
  };
}
