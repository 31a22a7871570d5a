// How errors are put into log fields and quarantine reasons. One place, so that every stage says
// the same thing the same way.

/** The message of an error (or the thrown value itself). */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** An errno code (ENOENT, ENOSPC...) when there is one, else the message. File system messages
 * carry the path, and an input's path can hold a patient's name: the code alone says enough. */
export function errorCode(e: unknown): string {
  return (e as NodeJS.ErrnoException | undefined)?.code ?? errorMessage(e);
}
