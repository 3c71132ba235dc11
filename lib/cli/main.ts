#!/usr/bin/env node
/**
 * The `moe-router` command: dispatches to one subcommand per file in lib/cli/.
 */
import { runCommand as guard } from './args';
import { benchCommand } from './bench';
import { demoCommand } from './demo';
import { serveCommand } from './serve';
import { profileCommand } from './profile';
import { runCommand as run } from './run';
import { validateCommand } from './validate';

const USAGE = `moe-router <command> [options]

Commands:
  demo      the main job on an embedded OLMoE-shaped layer: static vs top-p vs dynamic k, with /metrics
  run       run one MoE layer of a Hugging Face checkpoint on an .npy input
  validate  check a checkpoint folder (config, tensors, routing rule); --forward runs one forward
  profile   FLOP profile of a checkpoint or synthetic layer under a routing rule
  bench     run the benches (routing, layer vs roofline, fidelity) and write JSON + Markdown
  serve     serve /metrics, /health and /ready for a checkpoint or the demo layer, with optional traffic

Run "moe-router <command> --help" for a command's options.`;

const COMMANDS: Record<string, (argv: string[]) => Promise<void> | void> = {
  demo: demoCommand,
  run,
  validate: validateCommand,
  profile: profileCommand,
  bench: benchCommand,
  serve: serveCommand,
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(USAGE);
    return name ? 0 : 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(
      `moe-router: usage: unknown command ${JSON.stringify(name)}; commands: ${Object.keys(COMMANDS).join(', ')}\n`,
    );
    return 2;
  }
  return guard(name, () => command(rest));
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
