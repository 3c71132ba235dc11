#!/usr/bin/env node
/**
 * The `moe-router` command: dispatches to one subcommand per file in lib/cli/.
 */
import { runCommand as guard } from './args';
import { RUN_USAGE, runCommand as run } from './run';

const USAGE = `moe-router <command> [options]

Commands:
  run       run one MoE layer of a Hugging Face checkpoint on an .npy input
            ${RUN_USAGE.split('\n')[0].replace('moe-router run ', '')}

Run "moe-router <command> --help" for a command's options.`;

const COMMANDS: Record<string, (argv: string[]) => Promise<void> | void> = { run };

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
