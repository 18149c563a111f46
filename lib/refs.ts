// Finished channel entries waiting for their ref: a later request to the route claims
// them (once, by the same owner), or they are discarded after entryTtl or at shutdown.
import type { ResolvedConfig } from './config.js'
import type { Entry } from './entry.js'

/** Why a parked entry left the store: a request claimed it, its entryTtl passed, or the server shut down. */
export type ForsakeReason = 'claimed' | 'expired' | 'shut down'

/** Where a parked entry came from: told when it leaves the store (and why), so it is listed there no more. */
export interface EntryHome { forsake (entry: Entry, why: ForsakeReason): void }

interface Parked { entry: Entry, owner: string | undefined, home: EntryHome, timer: NodeJS.Timeout }

export class RefStore {
  readonly #ttl: number
  readonly #parked = new Map<string, Parked>()

  constructor (ttl: number) {
    this.#ttl = ttl
  }

  /** Keeps a finished entry for `ttl` ms; parking it again restarts the clock. */
  park (entry: Entry, owner: string | undefined, home: EntryHome): void {
    this.forget(entry)
    const timer = setTimeout(() => {
      this.#parked.delete(entry.ref)
      entry.discard().then(() => home.forsake(entry, 'expired'), () => {})
    }, this.#ttl)
    // Waiting refs alone must not keep the process alive.
    timer.unref()
    this.#parked.set(entry.ref, { entry, owner, home, timer })
    entry.holder = 'refs'
  }

  /** Stops keeping an entry: it is its upload set's again (to be consumed, claimed or discarded). */
  forget (entry: Entry): void {
    const parked = this.#parked.get(entry.ref)
    if (parked === undefined) return
    clearTimeout(parked.timer)
    this.#parked.delete(entry.ref)
    entry.holder = 'uploads'
  }

  /**
   * Whether a request may take the entry: only with the same owner and the same upload
   * config (the route and name it was checked against).
   */
  claimable (ref: string, owner: string | undefined, config: ResolvedConfig): boolean {
    const parked = this.#parked.get(ref)
    return parked !== undefined && parked.owner === owner && parked.entry.config.key === config.key
  }

  /** Hands a claimable entry (callers check first) to a request. Once: it leaves the store. */
  claim (ref: string): Entry {
    const parked = this.#parked.get(ref)!
    this.forget(parked.entry)
    parked.home.forsake(parked.entry, 'claimed')
    return parked.entry
  }

  /** Shutdown: every waiting entry is discarded (its temp file removed). */
  async discardAll (): Promise<void> {
    const all = [...this.#parked.values()]
    for (const { entry } of all) this.forget(entry)
    await Promise.all(all.map(async ({ entry, home }) => {
      await entry.discard()
      home.forsake(entry, 'shut down')
    }))
  }
}
