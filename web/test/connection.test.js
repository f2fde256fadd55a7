import test from 'node:test';
import assert from 'node:assert/strict';
import { BACKOFF, Connection, MemoryStorage, QueueFull, Status, backoffDelay, AuthError } from '../src/connection.js';
import { FakeClock, fakeSocketClass, startGatewayHttp, welcome } from '../testing/fakes.js';

const A = 'http://127.0.0.1:1';
const B = 'http://127.0.0.1:2';

/** A connection with a session already in storage (as after a login), on fake sockets. */
function setup({ urls = [A, B], storage = new MemoryStorage(), FakeSocket = fakeSocketClass(), clock = new FakeClock() } = {}) {
  if (!storage.getItem('tickmesh.session')) {
    storage.setItem('tickmesh.session', JSON.stringify({ token: 'tok', user: 'alice', accounts: ['ACC-ALICE'] }));
  }
  const conn = new Connection({ urls, WebSocket: FakeSocket, storage, clock, random: () => 0.5, fetch: async () => { throw new Error('no http here'); } });
  const statuses = [];
  conn.on('status', (s) => statuses.push(`${s.status} ${s.url}`));
  return { conn, storage, FakeSocket, clock, statuses };
}

/** Open the newest socket and answer its hello with a welcome. */
function goLive(FakeSocket, extra) {
  const socket = FakeSocket.last();
  socket.open();
  socket.receive(welcome(extra));
  return socket;
}

test('backoffDelay: exponential, capped, jittered within [d/2, d], zero before any failure', () => {
  assert.equal(backoffDelay(0), 0);
  let previousFull = 0;
  for (let failures = 1; failures <= 20; failures += 1) {
    const full = Math.min(BACKOFF.maxMs, BACKOFF.baseMs * 2 ** (failures - 1));
    assert.ok(full >= previousFull);
    previousFull = full;
    assert.equal(backoffDelay(failures, BACKOFF, () => 0), full);
    assert.equal(backoffDelay(failures, BACKOFF, () => 1), full / 2);
    for (const r of [0.1, 0.5, 0.999]) {
      const d = backoffDelay(failures, BACKOFF, () => r);
      assert.ok(d >= full / 2 && d <= full, `failures ${failures} r ${r}: ${d}`);
    }
  }
  assert.equal(backoffDelay(30, { maxMs: 500 }, () => 0), 500);
});

test('hello carries the token; a dropped connection moves to the next gateway and resumes every stream from its position', () => {
  const { conn, FakeSocket, clock, statuses } = setup();
  const got = [];
  conn.subscribe('bars:EURUSD:1', (item) => got.push(item));
  conn.subscribe('orders', () => {});
  conn.start();
  const first = FakeSocket.last();
  assert.equal(first.url, 'ws://127.0.0.1:1/ws');
  first.open();
  const [hello] = first.sent;
  assert.deepEqual(hello, { op: 'hello', v: 1, token: 'tok', streams: {}, client: 'tickmesh-web' });
  first.receive(welcome());
  assert.deepEqual(first.framesOf('subscribe').map((f) => f.stream).sort(), ['bars:EURUSD:1', 'orders']);
  first.receive({ op: 'subscribed', id: 1, stream: 'bars:EURUSD:1', epoch: 7, seq: 100, mode: 'snapshot' });
  first.receive({ op: 'batch', t: 0, items: [
    { stream: 'bars:EURUSD:1', epoch: 7, seq: 100, kind: 'snapshot', bars: [] },
    { stream: 'bars:EURUSD:1', epoch: 7, seq: 105, kind: 'bar', time: 60, open: 1, high: 1, low: 1, close: 1, volume: 1 },
    { stream: 'orders', epoch: 7, seq: 12, kind: 'snapshot', orders: [], fills: [], positions: [] },
  ] });
  assert.deepEqual(conn.positions(), { 'bars:EURUSD:1': [7, 105], orders: [7, 12] });

  first.drop(1006);
  assert.equal(conn.status, Status.RECONNECTING);
  assert.equal(FakeSocket.instances.length, 1, 'waits its backoff before trying again');
  clock.advance(backoffDelay(1, BACKOFF, () => 0.5));
  const second = FakeSocket.last();
  assert.equal(second.url, 'ws://127.0.0.1:2/ws', 'the next gateway');
  second.open();
  assert.deepEqual(second.sent[0].streams, { 'bars:EURUSD:1': [7, 105], orders: [7, 12] });
  clock.advance(40);
  second.receive(welcome({ gateway: 'gw-b' }));
  assert.equal(second.framesOf('subscribe').length, 0, 'resumed through hello, not subscribed anew');
  assert.equal(conn.counters.reconnects, 1);
  assert.equal(conn.counters.lastOutageMs, backoffDelay(1, BACKOFF, () => 0.5) + 40);
  assert.deepEqual(statuses, [
    `connecting ${A}`, `live ${A}`, `reconnecting ${B}`, `connecting ${B}`, `live ${B}`,
  ]);
  assert.deepEqual(got.map((i) => i.kind), ['snapshot', 'bar']);
  conn.stop();
  assert.equal(clock.pending(), 0, 'stop leaves no timer behind');
});

test('an item whose seq is not above the last held is dropped and counted; a snapshot always applies', () => {
  const { conn, FakeSocket } = setup();
  const seqs = [];
  conn.subscribe('ticks:EURUSD', (item) => seqs.push(`${item.kind}:${item.seq}`));
  conn.start();
  const socket = goLive(FakeSocket);
  const tick = (seq, epoch = 1) => ({ stream: 'ticks:EURUSD', epoch, seq, kind: 'tick', bid: 1, ask: 1 });
  socket.receive({ op: 'subscribed', id: 1, stream: 'ticks:EURUSD', epoch: 1, seq: 5, mode: 'snapshot' });
  socket.receive({ op: 'batch', t: 0, items: [{ stream: 'ticks:EURUSD', epoch: 1, seq: 5, kind: 'snapshot' }, tick(5), tick(6), tick(6)] });
  socket.receive({ op: 'batch', t: 0, items: [tick(4), tick(7), tick(6), tick(9)] });
  socket.receive({ op: 'batch', t: 0, items: [{ stream: 'other', epoch: 1, seq: 1, kind: 'tick' }] });
  assert.deepEqual(seqs, ['snapshot:5', 'tick:6', 'tick:7', 'tick:9']);
  assert.equal(conn.counters.duplicates, 4);
  conn.stop();
});

test('a reset: handlers get a reset item, then the snapshot replaces the position', () => {
  const { conn, FakeSocket, clock } = setup({ urls: [A] });
  const kinds = [];
  conn.subscribe('bars:EURUSD:5', (item) => kinds.push(`${item.kind}@${item.epoch}:${item.seq}`));
  conn.start();
  let socket = goLive(FakeSocket);
  socket.receive({ op: 'subscribed', id: 1, stream: 'bars:EURUSD:5', epoch: 1, seq: 50, mode: 'snapshot' });
  socket.receive({ op: 'batch', t: 0, items: [{ stream: 'bars:EURUSD:5', epoch: 1, seq: 50, kind: 'snapshot', bars: [] }] });
  socket.drop();
  clock.advance(BACKOFF.maxMs);
  socket = FakeSocket.last();
  assert.equal(socket.url, 'ws://127.0.0.1:1/ws', 'one gateway: the same one again');
  socket.open();
  assert.deepEqual(socket.sent[0].streams, { 'bars:EURUSD:5': [1, 50] });
  socket.receive(welcome());
  socket.receive({ op: 'subscribed', id: null, stream: 'bars:EURUSD:5', epoch: 2, seq: 3, mode: 'snapshot', reset: true });
  socket.receive({ op: 'batch', t: 0, items: [
    { stream: 'bars:EURUSD:5', epoch: 2, seq: 3, kind: 'snapshot', bars: [] },
    { stream: 'bars:EURUSD:5', epoch: 2, seq: 4, kind: 'bar', time: 300 },
  ] });
  assert.deepEqual(kinds, ['snapshot@1:50', 'reset@2:3', 'snapshot@2:3', 'bar@2:4']);
  assert.equal(conn.counters.resets, 1);
  assert.deepEqual(conn.positions(), { 'bars:EURUSD:5': [2, 4] });
  conn.stop();
});

test('orders placed offline survive a reload (a new Connection on the same storage) and are sent once live, then forgotten at the ack', () => {
  const storage = new MemoryStorage();
  const first = setup({ storage });
  const id = first.conn.place({ symbol: 'EURUSD', side: 'buy', type: 'market', quantity: 2, price: 1.5 });
  assert.match(id, /^[0-9a-z]{6}-[0-9a-z]+-1$/);
  assert.equal(first.conn.counters.queued, 1);
  // Reload: nothing of the first page lives on but its storage.
  const second = setup({ storage });
  assert.equal(second.conn.counters.queued, 1);
  const ids = new Set([id, second.conn.newClientOrderId(), second.conn.newClientOrderId()]);
  assert.equal(ids.size, 3, 'ids stay unique across the reload');
  second.conn.start();
  const socket = goLive(second.FakeSocket);
  const [place] = socket.framesOf('place');
  assert.deepEqual(place.order, { account: 'ACC-ALICE', symbol: 'EURUSD', side: 'buy', type: 'market', quantity: 2, client_order_id: id });
  assert.equal(second.conn.queue()[0].state, 'sent');
  // The connection drops before the ack: the same request again on the next welcome.
  socket.drop();
  second.clock.advance(BACKOFF.maxMs);
  const again = goLive(second.FakeSocket);
  const [resent] = again.framesOf('place');
  assert.equal(resent.order.client_order_id, id);
  const acks = [];
  second.conn.on('order_ack', (ack) => acks.push(ack.client_order_id));
  again.receive({ op: 'order_ack', id: resent.id, client_order_id: id, order_id: 'O-1', state: 'ACCEPTED' });
  assert.deepEqual(acks, [id]);
  assert.equal(second.conn.queue().length, 0);
  assert.equal(storage.getItem('tickmesh.orders'), '[]');
  again.receive({ op: 'order_ack', id: resent.id, client_order_id: id, order_id: 'O-1', state: 'ACCEPTED' });
  assert.deepEqual(acks, [id], 'a second ack of the same request is not news');
  second.conn.stop();
});

test('an order seen on the orders stream settles its queued place even when the ack was lost', () => {
  const { conn, FakeSocket } = setup();
  conn.subscribe('orders', () => {});
  conn.start();
  const socket = goLive(FakeSocket);
  const id = conn.place({ symbol: 'EURUSD', side: 'sell', type: 'limit', quantity: 1, price: 1.2 });
  assert.equal(socket.framesOf('place')[0].order.price, 1.2);
  socket.receive({ op: 'batch', t: 0, items: [{ stream: 'orders', epoch: 1, seq: 3, kind: 'order',
    order: { account: 'ACC-ALICE', client_order_id: id, order_id: 'O-9', state: 'ACCEPTED' }, fills: [] }] });
  assert.equal(conn.queue().length, 0);
  conn.stop();
});

test('rejects: a final one drops the request with an event; a retryable one sends the same request again after a backoff', () => {
  const { conn, FakeSocket, clock } = setup();
  conn.start();
  const socket = goLive(FakeSocket);
  const rejects = [];
  conn.on('order_reject', (r) => rejects.push(r.reason));
  const bad = conn.place({ symbol: 'EURUSD', side: 'buy', type: 'market', quantity: 1, account: 'ACC-BOB' });
  const busy = conn.cancel('some-order');
  const [placeFrame] = socket.framesOf('place');
  const [cancelFrame] = socket.framesOf('cancel');
  assert.deepEqual(cancelFrame, { op: 'cancel', id: cancelFrame.id, account: 'ACC-ALICE', client_order_id: busy, target: 'some-order' });
  socket.receive({ op: 'order_reject', id: placeFrame.id, client_order_id: bad, reason: 'NOT_YOUR_ACCOUNT', message: 'no', retryable: false });
  socket.receive({ op: 'order_reject', id: cancelFrame.id, client_order_id: busy, reason: 'RATE_LIMITED', message: 'slow down', retryable: true });
  assert.deepEqual(rejects, ['NOT_YOUR_ACCOUNT']);
  assert.deepEqual(conn.queue().map((r) => [r.client_order_id, r.state]), [[busy, 'retrying']]);
  clock.advance(BACKOFF.maxMs);
  const cancels = socket.framesOf('cancel');
  assert.equal(cancels.length, 2);
  assert.equal(cancels[1].client_order_id, busy);
  const replaceId = conn.replace('some-order', { quantity: 3, price: 1.3 });
  const [replace] = socket.framesOf('replace');
  assert.deepEqual(replace, { op: 'replace', id: replace.id, account: 'ACC-ALICE', client_order_id: replaceId, target: 'some-order', quantity: 3, price: 1.3 });
  conn.stop();
});

test('heartbeats: a ping after heartbeat_ms without sending; a gateway silent for 3 × heartbeat_ms is closed and left', () => {
  const { conn, FakeSocket, clock } = setup();
  conn.start();
  const socket = goLive(FakeSocket, { heartbeat_ms: 1000 });
  clock.advance(1000);
  assert.equal(socket.framesOf('ping').length, 1);
  socket.receive({ op: 'pong', t: socket.framesOf('ping')[0].t });
  assert.equal(conn.rttMs, 0);
  clock.advance(1500);
  socket.receive({ op: 'heartbeat', t: 0 }); // heard at 2.5 s: alive
  clock.advance(2900);
  assert.equal(conn.status, Status.LIVE);
  assert.equal(socket.closed, null);
  clock.advance(200); // 3.1 s of silence
  assert.notEqual(socket.closed, null);
  assert.equal(conn.url, B);
  assert.equal(FakeSocket.last().url, 'ws://127.0.0.1:2/ws', 'on to the other gateway');
  conn.stop();
});

test('an attempt that never reaches welcome fails over after the connect timeout', () => {
  const { conn, FakeSocket, clock } = setup();
  conn.start();
  FakeSocket.last().open(); // hello sent, no answer
  clock.advance(5000);
  assert.equal(conn.status, Status.RECONNECTING);
  clock.advance(BACKOFF.maxMs);
  assert.equal(FakeSocket.last().url, 'ws://127.0.0.1:2/ws');
  conn.stop();
});

test('a refused session (close 4001) is forgotten: offline, an auth event, no reconnect', () => {
  const { conn, FakeSocket, clock, storage } = setup();
  const auth = [];
  conn.on('auth', (a) => auth.push(a));
  conn.start();
  FakeSocket.last().open();
  FakeSocket.last().drop(4001);
  assert.equal(conn.status, Status.OFFLINE);
  assert.equal(auth.length, 1);
  assert.equal(storage.getItem('tickmesh.session'), null);
  clock.advance(60_000);
  assert.equal(FakeSocket.instances.length, 1);
});

test('login over HTTP keeps the session in storage, learns the gateways and connects; a wrong password is an AuthError', async (t) => {
  const server = await startGatewayHttp({ gateways: null });
  t.after(() => server.close());
  const storage = new MemoryStorage();
  const FakeSocket = fakeSocketClass();
  const dead = 'http://127.0.0.1:9'; // nothing listens on the discard port: the login goes on to the next
  const conn = new Connection({ urls: [dead, server.url], WebSocket: FakeSocket, storage, clock: new FakeClock() });
  await assert.rejects(conn.login({ user: 'alice', password: 'nope' }), AuthError);
  assert.equal(conn.session, null);
  assert.deepEqual(await conn.login({ user: 'alice', password: 'pw' }), { user: 'alice', accounts: ['ACC-ALICE'] });
  assert.deepEqual(conn.session, { token: 'tok-alice', user: 'alice', accounts: ['ACC-ALICE'] });
  assert.equal(FakeSocket.last().url, `${server.url.replace('http', 'ws')}/ws`, 'connected to the gateway that answered');
  const reloaded = new Connection({ urls: [server.url], WebSocket: FakeSocket, storage, clock: new FakeClock() });
  assert.equal(reloaded.session.token, 'tok-alice', 'a reload keeps the session');
  await conn.logout();
  assert.equal(conn.session, null);
  assert.equal(conn.status, Status.OFFLINE);
  assert.ok(server.requests.some((r) => r.path === '/api/logout'));
});

test('the order queue is bounded: past it a request is refused with the counts, none is dropped', () => {
  const storage = new MemoryStorage();
  storage.setItem('tickmesh.session', JSON.stringify({ token: 'tok', user: 'alice', accounts: ['ACC-ALICE'] }));
  const conn = new Connection({ urls: [A], WebSocket: fakeSocketClass(), storage, clock: new FakeClock(), maxQueued: 2 });
  conn.place({ symbol: 'EURUSD', side: 'buy', type: 'market', quantity: 1 });
  conn.cancel('x');
  assert.throws(() => conn.replace('x', { quantity: 1, price: 1 }), (err) => err instanceof QueueFull && err.queued === 2 && err.limit === 2);
  assert.equal(conn.queue().length, 2);
});

test('at most 32 order requests in flight per connection; an error frame for one is its reject', () => {
  const { conn, FakeSocket, clock } = setup();
  conn.start();
  const socket = goLive(FakeSocket);
  const ids = [];
  for (let i = 0; i < 40; i += 1) ids.push(conn.place({ symbol: 'EURUSD', side: 'buy', type: 'market', quantity: 1 }));
  let places = socket.framesOf('place');
  assert.equal(places.length, 32, 'the rest wait for answers');
  socket.receive({ op: 'order_ack', id: places[0].id, client_order_id: ids[0], order_id: 'O-0', state: 'ACCEPTED' });
  places = socket.framesOf('place');
  assert.equal(places.length, 33, 'an answer makes room for the next');
  assert.equal(places[32].order.client_order_id, ids[32]);
  const rejects = [];
  conn.on('order_reject', (r) => rejects.push([r.client_order_id, r.reason]));
  socket.receive({ op: 'error', id: places[1].id, code: 'bad_request', message: 'quantity', fatal: false });
  socket.receive({ op: 'error', id: places[2].id, code: 'busy', message: 'too many', fatal: false });
  assert.deepEqual(rejects, [[ids[1], 'bad_request']]);
  assert.equal(conn.queue().find((r) => r.client_order_id === ids[2]).state, 'retrying');
  const sentOf = (cid) => socket.framesOf('place').filter((f) => f.order.client_order_id === cid).length;
  clock.advance(BACKOFF.maxMs);
  assert.equal(sentOf(ids[2]), 1, 'due again, but 32 are in flight: it waits for a slot');
  socket.receive({ op: 'order_ack', id: places[3].id, client_order_id: ids[3], order_id: 'O-3', state: 'ACCEPTED' });
  assert.equal(sentOf(ids[2]), 2, 'sent again at the next free slot, same id');
  conn.stop();
  assert.equal(clock.pending(), 0);
});
