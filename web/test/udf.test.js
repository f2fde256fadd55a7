import test from 'node:test';
import assert from 'node:assert/strict';
import { UdfClient, UdfError, udfToBars } from '../src/udf.js';
import { startGatewayHttp, syntheticBars } from '../testing/fakes.js';

const T0 = 1_764_000_000;
const STEP = 60;
// 200 bars, with a weekend-like hole of 100 bars in the middle.
const BARS = syntheticBars({ start: T0, end: T0 + 300 * STEP, step: STEP, gap: [T0 + 100 * STEP, T0 + 200 * STEP] });

test('barsBack walks over a gap (no_data with nextTime) of a server that answers by from/to', async (t) => {
  const server = await startGatewayHttp({ history: { 'EURUSD:1': BARS }, byRange: true });
  t.after(() => server.close());
  const udf = new UdfClient({ baseUrl: server.url });
  const end = T0 + 300 * STEP;
  const { bars, noData } = await udf.barsBack({ symbol: 'EURUSD', resolution: '1', from: end - 30 * STEP, to: end, countBack: 150 });
  assert.equal(noData, false);
  assert.ok(bars.length >= 150, `${bars.length} bars`);
  assert.deepEqual(bars.map((b) => b.time), BARS.filter((b) => b.time < end).slice(-bars.length).map((b) => b.time), 'contiguous, oldest first');
  assert.ok(server.requests.some((r) => r.path === '/udf/history'), 'asked the server');
  // Beyond the first bar: no_data without nextTime ends the walk with noData.
  const start = await udf.barsBack({ symbol: 'EURUSD', resolution: '1', from: T0 - 30 * STEP, to: T0 + 10 * STEP, countBack: 50 });
  assert.deepEqual([start.bars.length, start.noData], [10, true]);
});

test('UDF answers and errors', async (t) => {
  const server = await startGatewayHttp({ history: { 'EURUSD:1': BARS }, now: T0 });
  t.after(() => server.close());
  const udf = new UdfClient({ baseUrl: `${server.url}/` });
  assert.equal(await udf.time(), T0);
  await assert.rejects(udf.symbol('NOPE'), UdfError);
  assert.equal((await udf.config()).supports_time, true);
  await assert.rejects(new UdfClient({ baseUrl: 'http://127.0.0.1:9' }).config(), /unreachable/);
  // A function: the gateway is looked up at each request (the page follows its connection).
  let base = 'http://127.0.0.1:9';
  const moving = new UdfClient({ baseUrl: () => base });
  await assert.rejects(moving.config(), /unreachable/);
  base = server.url;
  assert.ok((await moving.config()).supported_resolutions);
  assert.deepEqual(udfToBars({ s: 'ok', t: [120, 60], o: [1, 2], h: [1, 2], l: [1, 2], c: [1, 2], v: [5, 6] }).map((b) => [b.time, b.volume]), [[60, 6], [120, 5]]);
});
