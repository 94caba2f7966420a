/**
 * Exit codes of `nightfuse` (documented in the README and every --help):
 *   0  done
 *   1  the operation failed or was refused (the gateway said no, invalid policy, injection failed)
 *   2  usage error (unknown command or flag, missing or extra argument, bad value)
 *   3  cannot reach the gateway, or it refused the admin token
 * An expected error is one line on stderr; only a bug prints a stack trace.
 */
export const EXIT = { OK: 0, FAILED: 1, USAGE: 2, UNREACHABLE: 3 } as const;

export const EXIT_CODES_HELP = `Exit codes: 0 ok, 1 failed or refused, 2 usage error, 3 cannot reach the gateway or wrong token.`;

export class CliError extends Error {
  override name = 'CliError';
  constructor(message: string, readonly exitCode: number = EXIT.FAILED) {
    super(message);
  }
}

export const usageError = (message: string) => new CliError(message, EXIT.USAGE);

/** One line: multi-line messages (lists of errors) are joined with "; ". */
export function oneLine(message: string): string {
  return message.split('\n').map((l) => l.trim()).filter(Boolean).join('; ');
}
