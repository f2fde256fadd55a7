// The one place where bar items become a bar series (the datafeed and the page both use it).
//
// Rules, in the order they are checked:
// - a `snapshot` replaces every bar held (sorted by time, one bar per time);
// - a bar whose time equals the last bar's replaces it (the forming bar grew);
// - a bar newer than the last is appended;
// - a bar older than the last is ignored and counted: a chart's update() throws on an older
//   time ("Cannot update oldest data"), so such a bar must never reach it.
// Times are the gateway's: bucket start in epoch seconds. The series is bounded (`maxBars`):
// past it the oldest bars are dropped and counted.

/** The fields of a bar, copied: callers may mutate what they get, never what we hold. */
export function copyBar(bar) {
  return {
    time: bar.time,
    open: bar.open,
    high: bar.high,
    low: bar.low,
    close: bar.close,
    volume: bar.volume ?? 0,
    closed: Boolean(bar.closed),
  };
}

/** Sorted by time, the later of two bars with the same time kept. */
export function normalizeBars(bars) {
  const byTime = new Map();
  for (const bar of bars) byTime.set(bar.time, copyBar(bar));
  return [...byTime.values()].sort((a, b) => a.time - b.time);
}

function sameBar(a, b) {
  return a.time === b.time && a.open === b.open && a.high === b.high && a.low === b.low &&
    a.close === b.close && a.volume === b.volume;
}

export class BarSeries {
  constructor({ maxBars = 10_000 } = {}) {
    if (!(maxBars > 0)) throw new RangeError(`maxBars must be positive, got ${maxBars}`);
    this.maxBars = maxBars;
    this.bars = [];
    this.ignored = 0; // bars older than the last one
    this.trimmed = 0; // oldest bars dropped past maxBars
  }

  get length() {
    return this.bars.length;
  }

  /** The newest bar (a copy), or null. */
  last() {
    const bar = this.bars[this.bars.length - 1];
    return bar ? copyBar(bar) : null;
  }

  /** The oldest bar's time, or null. */
  firstTime() {
    return this.bars.length ? this.bars[0].time : null;
  }

  /** Copies of every bar, oldest first. */
  all() {
    return this.bars.map(copyBar);
  }

  /**
   * Merge one stream item (`kind` "bar" or "snapshot") and say what happened:
   * `{action: "replace"|"append", bar}` (bar: a copy, for update()), `{action: "snapshot",
   * bars}` (copies, for setData()), or `{action: "ignored"}`.
   */
  apply(item) {
    if (item.kind === 'snapshot') return this.snapshot(item.bars ?? []);
    if (item.kind !== 'bar') throw new TypeError(`not a bar item: ${item.kind}`);
    const last = this.bars[this.bars.length - 1];
    if (last && item.time < last.time) {
      this.ignored += 1;
      return { action: 'ignored' };
    }
    const bar = copyBar(item);
    if (last && item.time === last.time) {
      this.bars[this.bars.length - 1] = bar;
      return { action: 'replace', bar: copyBar(bar) };
    }
    this.bars.push(bar);
    this._trim();
    return { action: 'append', bar: copyBar(bar) };
  }

  /** Replace everything held by `bars` (any order; `{action: "snapshot", bars}`). */
  snapshot(bars) {
    this.bars = normalizeBars(bars);
    this._trim();
    return { action: 'snapshot', bars: this.all() };
  }

  /**
   * Add bars older than the oldest held (history scrolled into view); others are skipped.
   * Returns how many were added.
   */
  prepend(bars) {
    const first = this.firstTime();
    const older = normalizeBars(bars).filter((b) => first === null || b.time < first);
    if (older.length === 0) return 0;
    const room = Math.max(0, this.maxBars - this.bars.length);
    const kept = older.slice(Math.max(0, older.length - room));
    this.trimmed += older.length - kept.length;
    this.bars = kept.concat(this.bars);
    return kept.length;
  }

  /**
   * True when `bars` only extend what this series holds: every bar of theirs older than our
   * last bar is one we hold with the same values, and none of ours in their range is missing.
   * Their bars at or after our last time are updates (the forming bar grew, newer bars came),
   * not a change of what a chart already drew.
   */
  continues(bars) {
    const theirs = normalizeBars(bars);
    const last = this.bars[this.bars.length - 1];
    if (!last || theirs.length === 0) return true;
    const held = this.bars.filter((b) => b.time >= theirs[0].time && b.time < last.time);
    const before = theirs.filter((b) => b.time < last.time && b.time >= this.bars[0].time);
    if (held.length !== before.length) return false;
    return before.every((b, i) => sameBar(b, held[i]));
  }

  _trim() {
    const over = this.bars.length - this.maxBars;
    if (over > 0) {
      this.bars.splice(0, over);
      this.trimmed += over;
    }
  }
}
