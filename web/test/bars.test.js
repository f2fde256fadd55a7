import test from 'node:test';
import assert from 'node:assert/strict';
import { BarSeries } from '../src/bars.js';

const bar = (time, close, extra = {}) => ({ kind: 'bar', time, open: 1, high: 2, low: 0.5, close, volume: 3, ...extra });

test('the merge rules: same time replaces, newer appends, older is ignored and counted', () => {
  const series = new BarSeries();
  const table = [
    [bar(60, 1.0), 'append', [60]],
    [bar(60, 1.1), 'replace', [60]],
    [bar(120, 1.2), 'append', [60, 120]],
    [bar(60, 9.9), 'ignored', [60, 120]],
    [bar(120, 1.3, { closed: true }), 'replace', [60, 120]],
    [{ kind: 'snapshot', bars: [bar(300, 3), bar(180, 1), bar(240, 2), bar(240, 2.5)] }, 'snapshot', [180, 240, 300]],
    [bar(240, 0), 'ignored', [180, 240, 300]],
  ];
  for (const [item, action, times] of table) {
    assert.equal(series.apply(item).action, action, `${item.kind} ${item.time}`);
    assert.deepEqual(series.all().map((b) => b.time), times);
  }
  assert.equal(series.ignored, 2);
  assert.equal(series.last().close, 3);
  assert.equal(series.all()[1].close, 2.5, 'the later of two bars with one time is kept');
});

test('what apply returns is a copy: mutating it changes nothing held', () => {
  const series = new BarSeries();
  const { bar: got } = series.apply(bar(60, 1));
  got.close = 42;
  series.all()[0].close = 43;
  assert.equal(series.last().close, 1);
});

test('prepend adds only older bars, and the series stays bounded', () => {
  const series = new BarSeries({ maxBars: 4 });
  series.apply(bar(300, 1));
  series.apply(bar(360, 1));
  assert.equal(series.prepend([bar(300, 7), bar(240, 1), bar(180, 1), bar(120, 1)]), 2);
  assert.deepEqual(series.all().map((b) => b.time), [180, 240, 300, 360]);
  assert.equal(series.last().close, 1, 'a prepended bar never replaces a held one');
  series.apply(bar(420, 1));
  assert.deepEqual(series.all().map((b) => b.time), [240, 300, 360, 420]);
  assert.equal(series.trimmed, 2);
});

test('continues: a snapshot that extends what is held is not a change; one that rewrites it is', () => {
  const series = new BarSeries();
  series.snapshot([bar(60, 1), bar(120, 2), bar(180, 3)]);
  assert.ok(series.continues([bar(120, 2), bar(180, 3.5), bar(240, 4)]), 'forming bar grew, newer came');
  assert.ok(series.continues([bar(240, 4)]), 'only newer bars');
  assert.ok(!series.continues([bar(60, 1), bar(120, 2.2), bar(180, 3)]), 'a drawn bar changed');
  assert.ok(!series.continues([bar(60, 1), bar(180, 3)]), 'a drawn bar vanished');
  assert.ok(new BarSeries().continues([bar(60, 1)]), 'nothing held: nothing to change');
});
