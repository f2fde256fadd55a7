// A harness that calls the datafeed as the Charting Library's documentation says the library
// does (/work/shared/REFERENCES.md section 5): onReady → resolveSymbol → getBars with
// firstDataRequest and countBack → getBars walking back until noData → subscribeBars → a
// resolution switch with the old listener living on → unsubscribeBars.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Connection, MemoryStorage } from '../src/connection.js';
import { createDatafeed, toTvBar } from '../src/datafeed.js';
import { FakeClock, fakeSocketClass, startGatewayHttp, syntheticBars, welcome } from '../testing/fakes.js';

const NOW = 1_764_600_000; // seconds, a minute boundary
const HISTORY = syntheticBars({ start: NOW - 1000 * 60, end: NOW + 60, step: 60 }); // 1001 bars, the last forming
const HISTORY_5 = syntheticBars({ start: NOW - 200 * 300, end: NOW + 300, step: 300 });

/** Call `invoke(onOk, onError)`; resolves with onOk's arguments; fails if either callback
 * runs synchronously (the library requires every callback asynchronous). */
function viaCallbacks(invoke) {
  return new Promise((resolve, reject) => {
    let sync = true;
    invoke(
      (...args) => (sync ? reject(new Error('callback called synchronously')) : resolve(args)),
      (reason) => (sync ? reject(new Error('error callback called synchronously')) : reject(new Error(String(reason)))),
    );
    sync = false;
  });
}

const turn = () => new Promise((resolve) => setTimeout(resolve, 0)); // after the datafeed's deferred callbacks

async function fixture(t) {
  const server = await startGatewayHttp({ history: { 'EURUSD:1': HISTORY, 'EURUSD:5': HISTORY_5 }, now: NOW, maxPerAnswer: 250 });
  t.after(() => server.close());
  const storage = new MemoryStorage();
  storage.setItem('tickmesh.session', JSON.stringify({ token: 'tok', user: 'alice', accounts: ['ACC-ALICE'] }));
  const FakeSocket = fakeSocketClass();
  const clock = new FakeClock();
  const conn = new Connection({ urls: [server.url], WebSocket: FakeSocket, storage, clock, random: () => 0.5 });
  conn.start();
  const socket = FakeSocket.last();
  socket.open();
  socket.receive(welcome());
  t.after(() => conn.stop());
  const datafeed = createDatafeed(conn, { baseUrl: server.url });
  return { server, conn, socket, datafeed, clock, FakeSocket };
}

const barItem = (stream, seq, bar) => ({ stream, epoch: 1, seq, kind: 'bar', closed: false, ...bar });

test('the library\'s calls from onReady to unsubscribeBars, as its docs describe them', async (t) => {
  const { server, socket, datafeed } = await fixture(t);

  const [config] = await viaCallbacks((ok) => datafeed.onReady(ok));
  assert.deepEqual(config.supported_resolutions, ['1S', '1', '5', '15', '60', '1D']);
  assert.equal(config.supports_time, true);

  const [info] = await viaCallbacks((ok, err) => datafeed.resolveSymbol('EURUSD', ok, err));
  for (const field of ['name', 'full_name', 'description', 'type', 'session', 'exchange', 'listed_exchange',
    'timezone', 'format', 'pricescale', 'minmov', 'supported_resolutions']) {
    assert.ok(info[field] !== undefined, `LibrarySymbolInfo.${field}`);
  }
  assert.equal(info.has_intraday, true, 'has_intraday defaults to false in the library: it must be set');
  assert.equal(info.has_seconds, true);
  assert.equal(info.timezone, 'Etc/UTC');
  assert.equal(info.session, '24x7');
  assert.equal(info.pricescale, 100000);
  await assert.rejects(viaCallbacks((ok, err) => datafeed.resolveSymbol('NOPE', ok, err)), /unknown_symbol/);

  // First request: countBack bars ending now, the forming bar last; the server pages at 250.
  const [first, firstMeta] = await viaCallbacks((ok, err) => datafeed.getBars(info, '1',
    { from: NOW - 300 * 60, to: NOW + 1, countBack: 300, firstDataRequest: true }, ok, err));
  assert.equal(first.length, 300);
  assert.equal(firstMeta.noData, false);
  assert.deepEqual(first[first.length - 1], toTvBar(HISTORY[HISTORY.length - 1]), 'the forming bar, in ms');
  assert.ok(server.requests.filter((r) => r.path === '/udf/history').length >= 2, 'walked past one page');

  // The library scrolls left: further requests end at the oldest bar it has, until noData.
  const all = [...first];
  let to = first[0].time / 1000;
  for (let request = 0; request < 20; request += 1) {
    const [bars, meta] = await viaCallbacks((ok, err) => datafeed.getBars(info, '1',
      { from: to - 300 * 60, to, countBack: 300, firstDataRequest: false }, ok, err));
    assert.ok(bars.length >= 300 || meta.noData, `never fewer than countBack unless noData (${bars.length})`);
    all.unshift(...bars);
    if (meta.noData) break;
    to = bars[0].time / 1000;
  }
  const times = all.map((b) => b.time);
  assert.deepEqual(times, HISTORY.map((b) => b.time * 1000), 'every bar once, ascending, in ms');
  const [again] = await viaCallbacks((ok, err) => datafeed.getBars(info, '1', { from: 0, to: HISTORY[0].time, countBack: 10, firstDataRequest: false }, ok, err));
  assert.equal(again.length, 0);

  // subscribeBars: complete current bars from the stream, async, copies, never older.
  const ticks1 = [];
  const resets = [];
  datafeed.subscribeBars(info, '1', (bar) => ticks1.push(bar), 'guid-1', () => resets.push('guid-1'));
  const stream1 = 'bars:EURUSD:1';
  assert.equal(socket.framesOf('subscribe').at(-1).stream, stream1);
  const forming = HISTORY[HISTORY.length - 1];
  socket.receive({ op: 'subscribed', id: 1, stream: stream1, epoch: 1, seq: 10, mode: 'snapshot' });
  socket.receive({ op: 'batch', t: 0, items: [
    { stream: stream1, epoch: 1, seq: 10, kind: 'snapshot', bars: HISTORY.slice(-5).map((b) => ({ ...b, kind: 'bar' })) },
    barItem(stream1, 11, { ...forming, close: 1.2, high: 1.2 }),
  ] });
  assert.equal(ticks1.length, 0, 'not inside the call that delivered the item');
  await turn();
  assert.deepEqual(ticks1.map((b) => [b.time, b.close]), [[forming.time * 1000, forming.close], [forming.time * 1000, 1.2]]);
  ticks1[1].close = 99; // the library mutates bars: ours must not change
  socket.receive({ op: 'batch', t: 0, items: [
    barItem(stream1, 12, { ...forming, time: forming.time - 60 }), // older than the last: never passed on
    barItem(stream1, 13, { ...forming, time: forming.time + 60, open: 1.2, high: 1.2, low: 1.2, close: 1.2 }),
  ] });
  await turn();
  assert.deepEqual(ticks1.slice(2).map((b) => b.time), [(forming.time + 60) * 1000]);
  assert.equal(datafeed.stats().ignored, 1);

  // A resolution switch: the library subscribes the new one and unsubscribes the old a bit later.
  const ticks5 = [];
  datafeed.subscribeBars(info, '5', (bar) => ticks5.push(bar), 'guid-5', () => resets.push('guid-5'));
  const stream5 = 'bars:EURUSD:5';
  socket.receive({ op: 'subscribed', id: 2, stream: stream5, epoch: 1, seq: 13, mode: 'snapshot' });
  socket.receive({ op: 'batch', t: 0, items: [
    { stream: stream5, epoch: 1, seq: 13, kind: 'snapshot', bars: HISTORY_5.slice(-3) },
    barItem(stream1, 14, { ...forming, time: forming.time + 60, close: 1.25, high: 1.25 }),
  ] });
  await turn();
  assert.equal(ticks1.at(-1).close, 1.25, 'the old listener lives on until unsubscribeBars');
  assert.deepEqual(ticks5.map((b) => b.time), [HISTORY_5.at(-1).time * 1000]);
  datafeed.unsubscribeBars('guid-1');
  assert.deepEqual(socket.framesOf('unsubscribe').map((f) => f.stream), [stream1]);
  const before = ticks1.length;
  socket.receive({ op: 'batch', t: 0, items: [
    barItem(stream1, 15, { ...forming, time: forming.time + 120 }),
    barItem(stream5, 15, { ...HISTORY_5.at(-1), close: 1.3 }),
  ] });
  await turn();
  assert.equal(ticks1.length, before, 'nothing after unsubscribeBars');
  assert.equal(ticks5.at(-1).close, 1.3);
  assert.deepEqual(resets, []);

  const [serverTime] = await viaCallbacks((ok) => datafeed.getServerTime(ok));
  assert.equal(serverTime, NOW);
  const [found] = await viaCallbacks((ok) => datafeed.searchSymbols('eur', '', '', ok));
  assert.deepEqual(found.map((s) => s.symbol), ['EURUSD']);
  datafeed.unsubscribeBars('guid-5');
  assert.equal(datafeed.stats().streams, 0);
});

test('onResetCacheNeededCallback after a reset that changed drawn bars, and only then', async (t) => {
  const { socket, datafeed, conn, clock, FakeSocket } = await fixture(t);
  const [info] = await viaCallbacks((ok, err) => datafeed.resolveSymbol('EURUSD', ok, err));
  const ticks = [];
  let resets = 0;
  datafeed.subscribeBars(info, '1', (bar) => ticks.push(bar), 'g', () => { resets += 1; });
  const stream = 'bars:EURUSD:1';
  const last3 = HISTORY.slice(-3).map((b) => ({ ...b, kind: 'bar' }));
  socket.receive({ op: 'subscribed', id: 1, stream, epoch: 1, seq: 10, mode: 'snapshot' });
  socket.receive({ op: 'batch', t: 0, items: [{ stream, epoch: 1, seq: 10, kind: 'snapshot', bars: last3 }] });
  await turn();
  ticks.length = 0;

  // A reset whose snapshot only extends what we hold: no reload, the new bars as updates.
  const next = { ...HISTORY.at(-1), time: HISTORY.at(-1).time + 60 };
  socket.receive({ op: 'subscribed', id: null, stream, epoch: 2, seq: 1, mode: 'snapshot', reset: true });
  socket.receive({ op: 'batch', t: 0, items: [{ stream, epoch: 2, seq: 1, kind: 'snapshot', bars: [...last3, next] }] });
  await turn();
  assert.equal(resets, 0);
  assert.deepEqual(ticks.map((b) => b.time / 1000), [HISTORY.at(-1).time, next.time]);

  // A reset that rewrites a drawn bar: the chart must reload.
  socket.receive({ op: 'subscribed', id: null, stream, epoch: 3, seq: 1, mode: 'snapshot', reset: true });
  socket.receive({ op: 'batch', t: 0, items: [{ stream, epoch: 3, seq: 1, kind: 'snapshot',
    bars: [{ ...last3[0], close: 2 }, last3[1], last3[2], next] }] });
  assert.equal(resets, 0, 'asynchronously');
  await turn();
  assert.equal(resets, 1);
  assert.equal(conn.counters.resets, 2);
  void clock; void FakeSocket;
});
