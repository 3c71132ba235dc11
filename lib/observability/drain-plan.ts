/**
 * How one source's drain record is added to a collector's {@link SeriesStore}: a list of ops over the record's
 * fixed positions, run in one tight loop. A scrape runs on the caches a forward has just emptied, where every
 * distinct function, object and string it touches costs memory latency; this touches one loop, the record, the ops
 * and the values. The collector builds a plan from its series handles at a source's first drain and again whenever
 * the store's set of series changes (a series appeared, was removed or reset).
 */
import { addFlatHistogram } from './bucketed-histogram';
import type { SeriesStore } from './series-store';
import { RecordHistogram, type TelemetryRecord } from './telemetry-types';

const enum Op {
  /** values[dst] += flat[src] */
  Add = 0,
  /** values[dst] = flat[src] when it is finite */
  SetFinite = 1,
  /** values[dst] += flat[src] - flat[aux] when positive */
  AddExcess = 2,
  /** values[dst] += flat[src] + flat[src + 1] + flat[src + 2] */
  AddSum3 = 3,
  /** the histogram at flat[src] into the block at dst (addFlatHistogram); remaps[aux]: its buckets, then remap */
  Histogram = 4,
}

/** Where a histogram's source buckets go in its family's buckets (BucketedHistogram.bucketRemap). */
export interface HistogramTarget {
  /** The family's finite buckets. */
  buckets: number;
  /** Source bucket i (of bounds.length + 1, the last +Inf) -> family bucket (buckets = +Inf). */
  remap: Int32Array;
}

export class DrainPlan {
  private readonly ops: number[] = [];
  private readonly remaps: number[] = [];
  private opsArray = new Int32Array(0);
  private remapsArray = new Int32Array(0);
  /** Series that do not exist yet (they appear with their first observation): checked after the ops. */
  readonly pending: ((r: TelemetryRecord) => void)[] = [];
  /** The store version the plan was built at, and the record shape it reads. */
  private version = -1;
  private readonly shape = new Int32Array(RecordHistogram.Duration + 3);

  add(src: number, dst: number): this {
    this.ops.push(Op.Add, src, dst, 0);
    return this;
  }
  setFinite(src: number, dst: number): this {
    this.ops.push(Op.SetFinite, src, dst, 0);
    return this;
  }
  addExcess(src: number, minus: number, dst: number): this {
    this.ops.push(Op.AddExcess, src, dst, minus);
    return this;
  }
  addSum3(src: number, dst: number): this {
    this.ops.push(Op.AddSum3, src, dst, 0);
    return this;
  }
  histogram(src: number, dst: number, target: HistogramTarget): this {
    this.ops.push(Op.Histogram, src, dst, this.remaps.length);
    this.remaps.push(target.buckets, ...target.remap);
    return this;
  }

  /** Freezes the plan for the store's current version and the record's shape. */
  seal(store: SeriesStore, r: TelemetryRecord): this {
    this.opsArray = Int32Array.from(this.ops);
    this.remapsArray = Int32Array.from(this.remaps);
    this.version = store.version;
    this.shapeOf(r, this.shape);
    return this;
  }

  /** Whether the plan still fits: no series came or went, and the record has the same layout. */
  fits(store: SeriesStore, r: TelemetryRecord): boolean {
    if (store.version !== this.version) return false;
    const shape = this.shape;
    for (let h = 0; h <= RecordHistogram.Duration; h++) if (r.histogramOffset(h) !== shape[h]) return false;
    return (
      r.expertCount === shape[RecordHistogram.Duration + 1] &&
      r.expertTokensOffset === shape[RecordHistogram.Duration + 2]
    );
  }

  /** Adds the record into `values`, then lets the pending series check for their first observation. */
  apply(r: TelemetryRecord, values: Float64Array): void {
    const ops = this.opsArray;
    const remaps = this.remapsArray;
    const f = r.flat;
    for (let i = 0; i < ops.length; i += 4) {
      const src = ops[i + 1];
      const dst = ops[i + 2];
      switch (ops[i]) {
        case Op.Add:
          values[dst] += f[src];
          break;
        case Op.SetFinite:
          if (Number.isFinite(f[src])) values[dst] = f[src];
          break;
        case Op.AddExcess:
          if (f[src] > f[ops[i + 3]]) values[dst] += f[src] - f[ops[i + 3]];
          break;
        case Op.AddSum3:
          values[dst] += f[src] + f[src + 1] + f[src + 2];
          break;
        default:
          addFlatHistogram(f, src, values, dst, remaps[ops[i + 3]], remaps, ops[i + 3] + 1);
      }
    }
    for (const check of this.pending) check(r);
  }

  private shapeOf(r: TelemetryRecord, out: Int32Array): void {
    for (let h = 0; h <= RecordHistogram.Duration; h++) out[h] = r.histogramOffset(h);
    out[RecordHistogram.Duration + 1] = r.expertCount;
    out[RecordHistogram.Duration + 2] = r.expertTokensOffset;
  }
}
