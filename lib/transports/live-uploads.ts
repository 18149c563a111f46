// The upload sets a transport has open (one per request, one per socket): stopped at
// shutdown, and waited for until every writer is closed and every file is gone.
import { PrematureCloseError, type EntryFailure } from '../errors.js'
import type { Uploads } from '../uploads.js'

export class LiveUploads {
  readonly #live = new Set<Uploads>()

  add (uploads: Uploads): void {
    this.#live.add(uploads)
  }

  /** Its request or socket is over: what is unfinished is cancelled, what nobody took discarded. */
  end (uploads: Uploads): void {
    // Stays live until every writer closed and every file is gone: shutdown waits for it.
    uploads.end(new PrematureCloseError()).finally(() => this.#live.delete(uploads))
  }

  /** Stops every unfinished entry. */
  async stop (reason: EntryFailure): Promise<void> {
    await Promise.all([...this.#live].map(async (uploads) => await uploads.abort(reason)))
  }

  /** Ends every set still open; resolves once their writers are closed and files gone. */
  async close (reason: EntryFailure): Promise<void> {
    await Promise.all([...this.#live].map((uploads) => uploads.end(reason)))
  }
}
