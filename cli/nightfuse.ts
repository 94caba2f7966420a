/** The `nightfuse` command. */
import { ConfigError } from '../common/func-config.js';
import { FlagError } from '../common/flags.js';
import { PolicyError } from '../common/policy.js';
import { ADMIN_USAGE } from './admin.js';

const USAGE = () => `usage: nightfuse <command> [flags]

commands:
  up          the single-node stack: gateway + launcher + workers (what npm start runs)
  gateway     the gateway alone (Nightcore's gateway flags)
  launcher    the node agent alone (Nightcore's engine/launcher flags)
  inject      load a shared library into a running process (ptrace) and call an entry in it

admin commands (the gateway's admin API):
${ADMIN_USAGE}

Run 'nightfuse <command> --help' for its flags.
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'up':
      await (await import('./up.js')).runUp(rest);
      return -1;
    case 'gateway':
      await (await import('../gateway/main.js')).runGateway(rest);
      return -1;
    case 'launcher':
      await (await import('../launcher/main.js')).runLauncher(rest);
      return -1;
    case 'inject':
      return (await import('./inject.js')).runInject(rest);
    case 'status':
    case 'merges':
    case 'edges':
    case 'merge':
    case 'unmerge':
    case 'policy':
      return (await import('./admin.js')).runAdmin(cmd, rest);
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(USAGE());
      return 0;
    default:
      process.stderr.write(`nightfuse: unknown command "${cmd}"\n${USAGE()}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: unknown) => {
    const known = err instanceof FlagError || err instanceof ConfigError || err instanceof PolicyError || (err as Error).message?.startsWith('cannot reach');
    process.stderr.write(`nightfuse: ${known ? (err as Error).message : (err as Error).stack ?? String(err)}\n`);
    process.exit(2);
  },
);
