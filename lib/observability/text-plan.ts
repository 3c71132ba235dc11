/**
 * The fixed text of an exposition (headers, `name{labels} ` prefixes, separators) encoded once into a byte blob,
 * with ops that say where each value of a {@link SeriesStore} goes: a scrape renders blob and values natively in
 * one call (native/telemetry/exposition_text.h). Values are written as JavaScript's String(number) writes them,
 * with prom-client's `Nan`, `+Inf` and `-Inf`, so the text is byte for byte what prom-client prints. A plan is
 * rebuilt only when the set of series changes (SeriesStore.version).
 */
import { native } from '../native';

/** Receives a family's text in order: fixed text, and values (a line prefix, then the value of a store slot). */
export interface TextSink {
  text(s: string): void;
  value(prefix: string, slot: number): void;
}

/** Something that writes its text into a {@link TextSink}: a family of a store, or fixed text. */
export type TextWriter = (sink: TextSink) => void;

const NO_VALUE = 0xffffffff;

export class TextPlan {
  private constructor(
    private readonly blob: Uint8Array,
    private readonly ops: Uint32Array,
  ) {}

  /** Collects what `write` emits: runs of fixed text become one op each, a value ends the op of its prefix. */
  static build(write: TextWriter): TextPlan {
    const pieces: string[] = [];
    const slots: number[] = [];
    let pending = '';
    write({
      text(s) {
        pending += s;
      },
      value(prefix, slot) {
        if (!(Number.isInteger(slot) && slot >= 0 && slot < NO_VALUE)) throw new RangeError(`bad slot ${slot}`);
        pieces.push(pending + prefix);
        slots.push(slot);
        pending = '';
      },
    });
    if (pending) {
      pieces.push(pending);
      slots.push(NO_VALUE);
    }
    const blob = Buffer.from(pieces.join(''), 'utf8');
    const ops = new Uint32Array(pieces.length * 3);
    let at = 0;
    pieces.forEach((piece, i) => {
      const bytes = Buffer.byteLength(piece, 'utf8');
      ops[3 * i] = at;
      ops[3 * i + 1] = bytes;
      ops[3 * i + 2] = slots[i];
      at += bytes;
    });
    return new TextPlan(blob, ops);
  }

  /** The text with these values. */
  render(values: Float64Array): string {
    return native().exposition.renderText(this.blob, this.ops, values);
  }

  /** Writes the text into `out`: its length in bytes, or minus the bytes `out` may need (nothing written). */
  renderInto(values: Float64Array, out: Uint8Array): number {
    return native().exposition.renderInto(this.blob, this.ops, values, out);
  }
}
