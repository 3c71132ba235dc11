#!/usr/bin/env node
/**
 * The `moe-router` command: dispatches to one subcommand per file in lib/cli/.
 */
import { runCommand as guard } from './args';
import { benchCommand } from './bench';
import { profileCommand } from './profile';
import { runCommand as run } from './run';
import { validateCommand } from './validate';

const USAGE = `moe-router <command> [options]

Commands:
  run       run one MoE layer of a Hugging Face checkpoint on an .npy input
  validate  check a checkpoint folder (config, tensors, routing rule); --forward runs one forward
  profile   FLOP profile of a checkpoint or synthetic layer under a routing rule
  bench     run the benches (routing, layer vs roofline, fidelity) and write JSON + Markdown

Run "moe-router <command> --help" for a command's options.`;

const COMMANDS: Record<string, (argv: string[]) => Promise<void> | void> = {
  run,
  validate: validateCommand,
  profile: profileCommand,
  bench: benchCommand,
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
