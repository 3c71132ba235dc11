/**
 * bench/overhead: what observability costs a layer forward. OLMoE shape (d=2048, f=1024, E=64, k=8), T=32, fp32,
 * random normal weights, everything on against everything off, interleaved in one run (ABBA order per round):
 *   on:  native counters drained by a /metrics scrape every 100 ms (what the endpoint of startObservabilityServer
 *        does: collector.metricsBuffer(), the text written natively into a reused buffer; default metrics
 *        included, refreshed at most every 10 s, the default; --scrape text: collector.metrics(), a string), an
 *        OTel SDK tracer (a BatchSpanProcessor, as a service exporting OTLP has; --span-processor simple) with an
 *        in-memory exporter recording moe.forward and its children for every call from the span
 *        records each scrape drains (traceDrainedSpans, batched every second by default; what waits at the end of
 *        a phase is recorded, exported and counted in it), JSON logging to a temp file with the periodic
 *        performance.measurement summary (the logger's own timer, every 60 s by default as in the library,
 *        --summary-ms 1000 for every second: a scrape's drain of the last 100 ms is used rather than draining
 *        again);
 *   off: no scrape, no spans, no logging (the native counters themselves always count).
 *
 * Two numbers, each the median over rounds of that round's on-versus-off difference (robust to load bursts of
 * other processes, which on a shared machine also make single forwards 5x slower now and then):
 *   - per call: median of the forward (and anything done right after it), on against off;
 *   - added time: mean time per call spent outside the forward (spans, scrapes, summaries, the loop yield and
 *     the phase's own garbage collection), on minus off, as a share of the median forward.
 * Also the measured cost of each piece — every scrape, every once-a-second span batch (driven by the bench's own
 * timer, doing what the library's timer does) and summary (the logger's own timer), every phase end (span batches,
 * and a summary at a summary interval of at most a second) — and their sum over the forward time, which noise
 * outside those pieces does not move; and the typical cost: each piece's median (a scrape, a span record, a
 * summary) times how often it ran, over the calls at the median forward —
 * medians on both sides, so the host's load bursts (which on the development VM double the mean forward) move
 * neither — and the same plus the on phases' extra garbage collection. The idle wait for the in-memory exporter's
 * timer at a phase end (it answers through setTimeout(0)) is reported but not counted: it is no work. Target: at
 * most 1 % at T=32.
 *
 * Before the timed rounds the on configuration runs --warmup scrapes (default 500) against T=1 forwards, with a span
 * batch and a summary every tenth, so that V8 has optimised their code, as in a service that has run for a minute
 * (--warmup 0: the state of a service in its first minute, when that code still runs interpreted).
 *
 * And the whole phase's wall time per call (calls, timers and garbage collection): the throughput a stream of
 * calls loses. --mode async runs forwardAsync, as a service does: the scrape then runs on the main thread while
 * the pool computes.
 *
 *   node --expose-gc --import tsx bench/overhead.ts [--mode sync|async] [--threads N] [--rounds 16] [--calls 32]
 *        [--parts metrics,spans,logs] [--span-flush-ms 1000]
 *        [--span-processor simple|batch] [--sample-rate 1] [--scrape buffer|text] [--warmup 500]
 *        [--summary-ms 60000] [--detailed-metrics 1] [--json FILE]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { buildLayer } from '../lib/bench/layer';
import { native } from '../lib/native';
import {
  configureLogging,
  initializeTracing,
  MetricsCollector,
  PerformanceSummaryLogger,
  traceDrainedSpans,
} from '../lib/observability';
import { benchArg } from '../lib/bench/args';

/** The quartiles of the per-round ratios: how far one round's on-versus-off difference is from the next. */
function quartiles(values: number[]): [number, number] {
  const sorted = [...values].sort((a, b) => a - b);
  if (!sorted.length) return [0, 0];
  return [sorted[Math.floor((sorted.length - 1) / 4)], sorted[Math.ceil(((sorted.length - 1) * 3) / 4)]];
}

/** The values at the given quantiles (nearest rank; 1 is the maximum). */
function percentiles(values: number[], qs: number[]): number[] {
  const sorted = [...values].sort((a, b) => a - b);
  return qs.map((q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : 0));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
}

const mean = (values: number[]) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : 0);
const collectGarbage = (globalThis as { gc?: () => void }).gc;
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

interface PhaseResult {
  /** Forward alone, per call. */
  forwardMs: number[];
  /** Forward plus span recording, per call. */
  callMs: number[];
  /** Everything between the end of one forward and the start of the next, plus this phase's GC, per call. */
  outsideMs: number[];
  /** The whole phase (calls, timers, its garbage collection) per call, ms. */
  wallPerCallMs: number;
  /** Garbage collection during the phase (from the runtime's gc entries) plus the forced one after it, ms. */
  gcMs: number;
}

async function main(): Promise<void> {
  const threads = Number(benchArg('threads', String(native().backendInfo().threads)));
  const rounds = Number(benchArg('rounds', '16'));
  // ~1 s phases: the span batches and the performance summary run about once a second, as in a service
  const calls = Number(benchArg('calls', '32'));
  // Which parts the "on" phases switch on (all by default), to see what each one costs.
  const parts = new Set(benchArg('parts', 'metrics,spans,logs').split(','));
  // how often drained span records become spans (traceDrainedSpans' default: every second; 0: at every scrape)
  const spanFlushMs = Number(benchArg('span-flush-ms', '1000'));
  // buffer: what /metrics serves (collector.metricsBuffer()); text: collector.metrics(), a string
  const scrapeKind = benchArg('scrape', 'buffer');
  if (scrapeKind !== 'buffer' && scrapeKind !== 'text')
    throw new Error(`--scrape: expected buffer or text, got ${scrapeKind}`);
  const T = 32;
  // sync: forward() blocks the event loop, timers run between calls; async: forwardAsync(), as a service runs it,
  // so a scrape runs on the main thread while the pool computes.
  const mode = benchArg('mode', 'sync');
  if (mode !== 'sync' && mode !== 'async') throw new Error(`--mode: expected sync or async, got ${mode}`);
  if (!collectGarbage) console.error('note: run with node --expose-gc so each phase pays for its own garbage');
  console.error(`building the OLMoE layer (fp32, ${threads} threads)...`);
  const layer = buildLayer({ name: 'OLMoE', d: 2048, f: 1024, E: 64, k: 8, tokens: [T] }, 'fp32', threads);
  const x = new Float32Array(T * layer.hiddenSize);
  native().bench.fillNormal(x, 7, 1);
  for (let i = 0; i < 5; i++) layer.forward(x);

  // Everything of the "on" configuration, built once; each on phase starts and stops its timers.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-overhead-'));
  const logFile = path.join(dir, 'router.log');
  const logLines = () => fs.readFileSync(logFile, 'utf8').split('\n').filter(Boolean).length;
  configureLogging({ file: logFile, format: 'json', serviceName: 'overhead-bench', environment: 'bench' });
  // 0: the collector without the per-expert token counter and the per-stage histograms (enableDetailedMetrics)
  const detailedMetrics = benchArg('detailed-metrics', '1') !== '0';
  const collector = new MetricsCollector('olmoe-bench', { enableDetailedMetrics: detailedMetrics });
  collector.observe(layer, { layerId: 0 });
  const exporter = new InMemorySpanExporter();
  // A BatchSpanProcessor by default (what initializeTracing sets up for OTLP), whose queue is exported at the end of
  // every on phase, inside the phase's time. --span-processor simple (the default of the passes before the
  // seventh) exports span by span, and the in-memory exporter answers each export through a setTimeout of its own:
  // those 96 timers a second run between the calls, outside the timed pieces, so with it the typical cost leaves
  // them out (the paired added time still counts them).
  const batchSpans = benchArg('span-processor', 'batch') === 'batch';
  // the share of calls traced (TracingConfig.sampleRate; default 1: every call)
  const sampleRate = Number(benchArg('sample-rate', '1'));
  const tracing = initializeTracing({
    spanExporter: exporter,
    register: false,
    serviceName: 'overhead-bench',
    batch: batchSpans,
    sampleRate,
  });
  // The once-a-second span batch is driven by the bench's own 1 s timer, which does what traceDrainedSpans' timer
  // would and is timed (the library's interval is set out of reach). The performance summary runs on its own timer
  // at --summary-ms (default: the library's 60 s), as in a service (which passes { drain: 'ifStale' }: a scrape's
  // drain of the last 100 ms is used); each of those summaries is timed through a wrapper of logNow. At an interval
  // of at most a phase (--summary-ms 1000, the passes before the eighth) every phase end also logs one (stop(true),
  // timed apart); at longer intervals a phase end logs none, and the summary's cost — timed after the rounds, after
  // forwards — counts at its rate (median / interval).
  const never = 3_600_000;
  const summaryIntervalMs = Number(benchArg('summary-ms', '60000'));
  if (!(summaryIntervalMs > 0)) throw new Error(`--summary-ms: expected a positive number, got ${summaryIntervalMs}`);
  const summaryAtPhaseEnd = summaryIntervalMs <= 1000;
  const summary = new PerformanceSummaryLogger({ collector, intervalMs: summaryIntervalMs });
  const scrapeMs: number[] = [];
  let spansRecorded = 0;
  let forwardsOn = 0;
  let forwardOnMs = 0; // forward time of the on phases
  let flushOnMs = 0; // span batches and the summary recorded when an on phase stops
  let spanFlushOnMs = 0; // the span batches alone
  let exportWaitOnMs = 0; // idle waits for the in-memory exporter's timer at phase ends (not counted)
  let periodicOnMs = 0; // the once-a-second span batches and summaries during the on phases
  const periodicPieceMs = { spans: 0, summary: 0 };
  // each span batch's time per record it held (the forwards since the previous batch), and each summary's time:
  // their medians give the typical cost of each piece, which the host's load bursts do not move
  const spanPerRecordMs: number[] = [];
  const summaryMs: number[] = [];
  const logNow = summary.logNow.bind(summary);
  summary.logNow = (opts) => {
    if (opts?.drain !== 'ifStale') return logNow(opts);
    const t0 = performance.now();
    const logged = logNow(opts);
    const ms = performance.now() - t0;
    periodicOnMs += ms;
    periodicPieceMs.summary += ms;
    summaryMs.push(ms);
    return logged;
  };
  let forwardsAtLastBatch = 0;
  const spanBatchDone = (ms: number) => {
    if (forwardsOn > forwardsAtLastBatch) spanPerRecordMs.push(ms / (forwardsOn - forwardsAtLastBatch));
    forwardsAtLastBatch = forwardsOn;
  };
  let gcDuringMs = 0;
  const gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcDuringMs += entry.duration;
  });
  gcObserver.observe({ entryTypes: ['gc'] });

  async function phase(on: boolean): Promise<PhaseResult> {
    // The layer's span ring fills in every phase (native counters always count): empty it first, so an on phase
    // only turns its own forwards into spans.
    layer.drainTelemetry();
    let scrapeTimer: NodeJS.Timeout | undefined;
    const stopSpans =
      on && parts.has('spans')
        ? traceDrainedSpans(collector, tracing.tracer, { flushIntervalMs: spanFlushMs > 0 ? never : 0 })
        : undefined;
    const periodic: NodeJS.Timeout[] = [];
    if (stopSpans && spanFlushMs > 0)
      periodic.push(
        setInterval(() => {
          const t0 = performance.now();
          stopSpans.flush();
          const ms = performance.now() - t0;
          periodicOnMs += ms;
          periodicPieceMs.spans += ms;
          spanBatchDone(ms);
        }, spanFlushMs),
      );
    if (on && parts.has('metrics')) {
      scrapeTimer = setInterval(() => {
        // the whole scrape: the drain, spans and text run synchronously, a default-metrics refresh (at most every
        // 10 s) finishes in the microtasks after it
        const t0 = performance.now();
        void (scrapeKind === 'buffer' ? collector.metricsBuffer() : collector.metrics()).then(() =>
          scrapeMs.push(performance.now() - t0),
        );
      }, 100);
    }
    if (on && parts.has('logs')) summary.start();
    const result: PhaseResult = { forwardMs: [], callMs: [], outsideMs: [], wallPerCallMs: 0, gcMs: 0 };
    forwardsAtLastBatch = forwardsOn;
    await yieldToLoop();
    const gcBefore = gcDuringMs;
    const phaseStart = performance.now();
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      if (mode === 'async') await layer.forwardAsync(x);
      else layer.forward(x);
      const t1 = performance.now();
      if (on) {
        forwardsOn++;
        forwardOnMs += t1 - t0;
      }
      const t2 = performance.now();
      await yieldToLoop(); // lets the scrape and summary timers run, in both configurations alike
      result.forwardMs.push(t1 - t0);
      result.callMs.push(t2 - t0);
      result.outsideMs.push(performance.now() - t1);
    }
    clearInterval(scrapeTimer);
    periodic.forEach(clearInterval);
    // spans wait in batches (traceDrainedSpans' flushIntervalMs): what still waits is recorded now, and counted
    // as time outside the forward like everything else the phase does. The flush's export work runs
    // synchronously and counts; the in-memory exporter then answers through a setTimeout(0) — at least 1 ms of
    // idle waiting, no work — which is reported apart and not counted.
    const f0 = performance.now();
    stopSpans?.();
    const flushed = stopSpans ? tracing.forceFlush() : undefined;
    const f1 = performance.now();
    await flushed;
    const waitedMs = performance.now() - f1;
    const s0 = performance.now();
    summary.stop(summaryAtPhaseEnd);
    const summaryStopMs = performance.now() - s0;
    const stopMs = f1 - f0 + summaryStopMs;
    if (on) {
      flushOnMs += stopMs;
      spanFlushOnMs += f1 - f0;
      exportWaitOnMs += waitedMs;
      if (stopSpans) spanBatchDone(f1 - f0);
      if (parts.has('logs') && summaryAtPhaseEnd) summaryMs.push(summaryStopMs);
    }
    spansRecorded += exporter.getFinishedSpans().filter((span) => span.name === 'moe.forward').length;
    exporter.reset();
    // Each phase collects its own garbage in its own time, so an off phase never pays for the on phase before it.
    const g0 = performance.now();
    collectGarbage?.();
    const forcedMs = performance.now() - g0;
    result.wallPerCallMs = (performance.now() - phaseStart) / calls;
    await yieldToLoop(); // the observer's entries arrive asynchronously
    // the forced collection shows up among the gc entries too: count it once
    result.gcMs = Math.max(gcDuringMs - gcBefore, forcedMs);
    result.outsideMs = result.outsideMs.map((ms) => ms + (forcedMs + stopMs) / calls);
    return result;
  }

  // A long-running service's steady state: V8 optimises the scrape, span and summary code only after it has run a
  // while (on the development VM a scrape allocates ~22 KB for its first ~100 runs, interpreted code boxing every
  // double, then ~3.5 KB, then ~2 KB after ~400), so the on configuration runs --warmup scrapes first — against
  // T=1 forwards, with a span batch and a summary every tenth — outside the timed rounds (0: none, the state of a
  // service in its first minute).
  const warmupScrapes = Number(benchArg('warmup', '500'));
  let warmupLines = 0;
  if (warmupScrapes > 0) {
    const x1 = x.subarray(0, layer.hiddenSize);
    layer.drainTelemetry();
    if (parts.has('logs')) summary.start(); // (its listener fills the window the warm-up's summaries log)
    const warmSpans = parts.has('spans')
      ? traceDrainedSpans(collector, tracing.tracer, { flushIntervalMs: never })
      : undefined;
    for (let i = 1; i <= warmupScrapes; i++) {
      layer.forward(x1);
      if (parts.has('metrics')) await (scrapeKind === 'buffer' ? collector.metricsBuffer() : collector.metrics());
      else collector.drainNow();
      if (i % 10 === 0) {
        warmSpans?.flush();
        if (parts.has('logs')) logNow(i % 20 === 0 ? { drain: 'ifStale' } : undefined); // the untimed original
      }
    }
    warmSpans?.();
    summary.stop(false);
    await tracing.forceFlush();
    exporter.reset();
    collectGarbage?.();
    warmupLines = logLines();
    console.error(`warm-up: ${warmupScrapes} scrapes against T=1 forwards (not timed)`);
  }

  const all: Record<'on' | 'off', PhaseResult[]> = { on: [], off: [] };
  const perCallRatios: number[] = [];
  const addedRatios: number[] = [];
  const wallRatios: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? [true, false] : [false, true];
    const round: Record<'on' | 'off', PhaseResult[]> = { on: [], off: [] };
    for (const o of [...order, ...[...order].reverse()]) round[o ? 'on' : 'off'].push(await phase(o));
    const pick = (which: 'on' | 'off', key: keyof PhaseResult) => round[which].flatMap((p) => p[key]);
    const forwardMedian = median(pick('off', 'forwardMs'));
    perCallRatios.push(median(pick('on', 'callMs')) / median(pick('off', 'callMs')) - 1);
    addedRatios.push((mean(pick('on', 'outsideMs')) - mean(pick('off', 'outsideMs'))) / forwardMedian);
    const wall = (which: 'on' | 'off') => mean(round[which].map((p) => p.wallPerCallMs));
    wallRatios.push(wall('on') / wall('off') - 1);
    all.on.push(...round.on);
    all.off.push(...round.off);
    console.error(
      `  round ${r + 1}/${rounds}: forward ${forwardMedian.toFixed(2)} ms; per call ${(perCallRatios[r] * 100).toFixed(2)} %, ` +
        `added ${(addedRatios[r] * 100).toFixed(2)} %, wall ${(wallRatios[r] * 100).toFixed(2)} %`,
    );
  }

  // At a summary interval longer than a phase, no summary ran in the rounds: time some now, each after 3 forwards
  // and with a drain of its own (what the timer's summary does when no scrape drained in the last tenth of it).
  if (!summaryAtPhaseEnd && parts.has('logs')) {
    summary.start();
    for (let i = 0; i < 16; i++) {
      for (let j = 0; j < 3; j++) layer.forward(x);
      const t0 = performance.now();
      logNow();
      summaryMs.push(performance.now() - t0);
    }
    summary.stop(false);
  }
  const onWallMs = all.on.reduce((sum, p) => sum + p.wallPerCallMs * calls, 0);
  // the summaries' share: what ran in the rounds, or at a longer interval its median at its rate
  const summaryTypicalMs = summaryAtPhaseEnd
    ? median(summaryMs) * summaryMs.length
    : parts.has('logs')
      ? (median(summaryMs) * onWallMs) / summaryIntervalMs
      : 0;
  const over = (which: 'on' | 'off', key: keyof PhaseResult) => all[which].flatMap((p) => p[key]);
  const forwardMs = median(over('off', 'forwardMs'));
  const scrapeMedianMs = median(scrapeMs);
  const scrapeMeanMs = mean(scrapeMs);
  const result = {
    date: new Date().toISOString(),
    workload: `OLMoE T=${T} fp32`,
    mode,
    threads,
    rounds,
    callsPerPhase: calls,
    parts: [...parts],
    spanFlushMs,
    scrape: scrapeKind,
    detailedMetrics,
    spanProcessor: batchSpans ? 'batch' : 'simple',
    sampleRate,
    gcPerPhase: collectGarbage !== undefined,
    summaryIntervalMs,
    forwardMedianMs: forwardMs,
    perCall: {
      onMedianMs: median(over('on', 'callMs')),
      offMedianMs: median(over('off', 'callMs')),
      overheadRatio: median(perCallRatios),
      roundQuartiles: quartiles(perCallRatios),
    },
    addedTime: {
      onMeanMs: mean(over('on', 'outsideMs')),
      offMeanMs: mean(over('off', 'outsideMs')),
      overheadRatio: median(addedRatios),
      roundQuartiles: quartiles(addedRatios),
    },
    // the whole phase per call: what a stream of calls loses in throughput
    wallPerCall: {
      onMeanMs: mean(all.on.map((p) => p.wallPerCallMs)),
      offMeanMs: mean(all.off.map((p) => p.wallPerCallMs)),
      overheadRatio: median(wallRatios),
      roundQuartiles: quartiles(wallRatios),
    },
    pieces: {
      // garbage collection per call (runtime gc entries during the phase, and the forced one after it)
      gcPerCallMs: {
        on: mean(all.on.map((p) => p.gcMs)) / calls,
        off: mean(all.off.map((p) => p.gcMs)) / calls,
      },
      scrapeMedianMs,
      scrapeMeanMs,
      // the tail: what moves the mean (a default-metrics refresh every 10 s, the host's bursts)
      scrapePercentilesMs: percentiles(scrapeMs, [0.9, 0.99, 1]),
      scrapes: scrapeMs.length,
      // moe.forward spans exported against forwards run with tracing on (every one: stopping drains)
      spansRecorded,
      forwardsOn,
      // span batches (and summaries) recorded when the on phases stopped
      flushOnMs,
      // the once-a-second span batches and summaries inside the on phases
      periodicOnMs,
      periodicPieceMs,
      spanFlushOnMs,
      exportWaitOnMs,
      // the scrapes (drain, text, spans when they are recorded at every scrape) and the span batches, over the
      // on phases' forward time (the rare default-metrics refresh counts)
      estimatedOverheadRatio: (scrapeMeanMs * scrapeMs.length + periodicOnMs + flushOnMs) / forwardOnMs,
      // the typical cost of each piece (its median) times how often it ran, over the on calls at the median
      // forward: medians on both sides, so neither is moved by the host's bursts
      spanPerRecordMedianMs: median(spanPerRecordMs),
      summaryMedianMs: median(summaryMs),
      estimatedTypicalRatio:
        (scrapeMedianMs * scrapeMs.length +
          median(spanPerRecordMs) * (parts.has('spans') ? forwardsOn : 0) +
          summaryTypicalMs) /
        (forwardsOn * median(over('on', 'forwardMs'))),
      // the same, plus the on phases' extra garbage collection per call (mean on minus mean off)
      estimatedTypicalWithGcRatio: 0,
      // the same timed work over the on calls at the median forward (the host's bursts inflate the mean)
      estimatedAtMedianRatio:
        (scrapeMeanMs * scrapeMs.length + periodicOnMs + flushOnMs) / (forwardsOn * median(over('on', 'forwardMs'))),
    },
    warmupScrapes,
    summaryRecordsLogged: logLines() - warmupLines,
  };
  result.pieces.estimatedTypicalWithGcRatio =
    result.pieces.estimatedTypicalRatio +
    (result.pieces.gcPerCallMs.on - result.pieces.gcPerCallMs.off) / median(over('on', 'forwardMs'));
  const pct = (v: number) => `${(v * 100).toFixed(2)} %`;
  const span = ([lo, hi]: [number, number]) => `${pct(lo)} to ${pct(hi)}`;
  console.log(
    [
      `OLMoE T=${T} fp32, ${mode} forward, ${threads} threads, ${rounds} rounds x 2 x 2 phases x ${calls} calls${sampleRate < 1 ? `, traces sampled at ${sampleRate}` : ''}; forward median ${forwardMs.toFixed(2)} ms`,
      '',
      '| overhead (median of paired rounds) | off | on | overhead | quartiles over rounds |',
      '|---|---|---|---|---|',
      `| per call: forward (median) | ${result.perCall.offMedianMs.toFixed(3)} ms | ${result.perCall.onMedianMs.toFixed(3)} ms | ${pct(result.perCall.overheadRatio)} | ${span(result.perCall.roundQuartiles)} |`,
      `| added time outside the forward (mean) | ${result.addedTime.offMeanMs.toFixed(3)} ms | ${result.addedTime.onMeanMs.toFixed(3)} ms | ${pct(result.addedTime.overheadRatio)} | ${span(result.addedTime.roundQuartiles)} |`,
      `| wall time per call, whole phase (mean) | ${result.wallPerCall.offMeanMs.toFixed(3)} ms | ${result.wallPerCall.onMeanMs.toFixed(3)} ms | ${pct(result.wallPerCall.overheadRatio)} | ${span(result.wallPerCall.roundQuartiles)} |`,
      '',
      `pieces: gc per call ${result.pieces.gcPerCallMs.on.toFixed(3)} ms on, ${result.pieces.gcPerCallMs.off.toFixed(3)} ms off; ` +
        `scrape median ${scrapeMedianMs.toFixed(3)} ms, mean ${scrapeMeanMs.toFixed(3)} ms, p90 / p99 / max ` +
        `${result.pieces.scrapePercentilesMs.map((v) => v.toFixed(2)).join(' / ')} ms (${result.pieces.scrapes} scrapes), ` +
        `spans ${spanFlushMs ? `in batches every ${spanFlushMs} ms and at phase ends` : 'at every scrape'} ` +
        `(${spansRecorded} moe.forward spans for ${forwardsOn} forwards; ${flushOnMs.toFixed(1)} ms at phase ends, ` +
        `${spanFlushOnMs.toFixed(1)} of it spans; ${exportWaitOnMs.toFixed(1)} ms waiting for the exporter, not counted), ` +
        `${periodicOnMs.toFixed(1)} ms of once-a-second work (span batches ${periodicPieceMs.spans.toFixed(1)}, ` +
        `summaries ${periodicPieceMs.summary.toFixed(1)}), ${result.summaryRecordsLogged} summary records; ` +
        `span records median ${result.pieces.spanPerRecordMedianMs.toFixed(3)} ms each, summaries median ` +
        `${result.pieces.summaryMedianMs.toFixed(3)} ms (every ${summaryIntervalMs / 1000} s` +
        `${summaryAtPhaseEnd ? ' and at phase ends' : ', timed after the rounds'}); ` +
        `typical cost (medians of pieces and forward) ` +
        `${pct(result.pieces.estimatedTypicalRatio)}, with the on phases' extra garbage collection ` +
        `${pct(result.pieces.estimatedTypicalWithGcRatio)}; ` +
        `timed work over the forward time ${pct(result.pieces.estimatedOverheadRatio)}, ` +
        `over the calls at the median forward ${pct(result.pieces.estimatedAtMedianRatio)} (target <= 1 %)`,
    ].join('\n'),
  );
  const out = benchArg('json', '');
  if (out) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, JSON.stringify(result, null, 2));
  }
  gcObserver.disconnect();
  await tracing.shutdown();
  layer.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
