// Finished entries waiting for their ref: a later request to the route claims them (once,
// by the same owner), or they are discarded after entryTtl or at shutdown. One whose
// bytes another process can find (a durable upload's, see kept-entry.ts) is also kept in
// the plugin's store while it waits: at shutdown it stays there, with its file, for the
// next process, where a request claims it from the store (lib/index.ts, claimRefs).
import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedConfig } from './config.js'
import type { Entry } from './entry.js'
import { keptRecord } from './kept-entry.js'
import type { Store } from './stores/store.js'

/** Why a parked entry left the store: a request claimed it, its entryTtl passed, or the server shut down. */
export type ForsakeReason = 'claimed' | 'expired' | 'shut down'

/** Where a parked entry came from: told when it leaves the store (and why), so it is listed there no more. */
export interface EntryHome { forsake (entry: Entry, why: ForsakeReason): void }

/** Where finished entries are kept across a restart, and where that is logged. */
export interface Keeping { store: Store, log: FastifyBaseLogger }

interface Parked {
  entry: Entry
  owner: string | undefined
  home: EntryHome
  timer: NodeJS.Timeout
  expiresAt: number
  /** Kept in the store: settles true once its record is written there (false if that failed). */
  kept: Promise<boolean> | undefined
}

export class RefStore {
  readonly #ttl: number
  readonly #parked = new Map<string, Parked>()
  readonly #keeping: Keeping | undefined
  /** Per ref, the last store operation on its record: they run in order. */
  readonly #writes = new Map<string, Promise<boolean>>()
  /** Upload configs whose entries were said to be unable to wait across a restart. */
  readonly #notKept = new Set<string>()

  /** `keeping`: where entries that can outlive the process are kept (none: in memory only). */
  constructor (ttl: number, keeping?: Keeping) {
    this.#ttl = ttl
    this.#keeping = keeping
  }

  /** Keeps a finished entry for `ttl` ms; parking it again restarts the clock. */
  park (entry: Entry, owner: string | undefined, home: EntryHome): void {
    this.forget(entry)
    const expiresAt = Date.now() + this.#ttl
    const timer = setTimeout(() => {
      this.#unpark(entry)
      this.#unkeep(parked)
      entry.discard().then(() => home.forsake(entry, 'expired'), () => {})
    }, this.#ttl)
    // Waiting refs alone must not keep the process alive.
    timer.unref()
    const parked: Parked = { entry, owner, home, timer, expiresAt, kept: this.#keep(entry, owner, expiresAt) }
    this.#parked.set(entry.ref, parked)
    entry.holder = 'refs'
  }

  /** Stops keeping an entry: it is its upload set's again (to be consumed, claimed or discarded). */
  forget (entry: Entry): void {
    const parked = this.#unpark(entry)
    if (parked === undefined) return
    entry.holder = 'uploads'
    this.#unkeep(parked)
  }

  /**
   * Resolves once the record of the entry parked under `ref` is written to the store:
   * whether it is kept there (false: nothing is parked under it, it cannot outlive the
   * process, or the write failed). A transport awaits it before it tells a client the
   * upload finished; a claim takes a kept entry's record from the store too, so that of
   * two processes sharing a store only one hands it out.
   */
  async kept (ref: string): Promise<boolean> {
    return await (this.#parked.get(ref)?.kept ?? false)
  }

  /** Whether an entry of this ref waits here (claimable or not). */
  holds (ref: string): boolean {
    return this.#parked.has(ref)
  }

  /**
   * Whether a request may take the entry: only with the same owner and the same upload
   * config (the route and name it was checked against), before its entryTtl passed.
   */
  claimable (ref: string, owner: string | undefined, config: ResolvedConfig): boolean {
    const parked = this.#parked.get(ref)
    // Past its expiry, the store's sweep may have taken its record (and file) already.
    return parked !== undefined && parked.owner === owner && parked.entry.config.key === config.key && Date.now() < parked.expiresAt
  }

  /** Hands a claimable entry (callers check first) to a request. Once: it leaves the store. */
  claim (ref: string): Entry {
    const parked = this.#parked.get(ref)!
    this.forget(parked.entry)
    parked.home.forsake(parked.entry, 'claimed')
    return parked.entry
  }

  /**
   * Shutdown: an entry kept in the store stays there, with what its writer stored, for
   * the next process (its writer was closed with 'done' already: it gets no call here);
   * every other waiting entry is discarded (its temp file removed).
   */
  async close (): Promise<void> {
    const all = [...this.#parked.values()]
    for (const { entry } of all) this.#unpark(entry)
    await Promise.all(all.map(async ({ entry, home, kept }) => {
      if (kept !== undefined && await kept) entry.holder = 'released'
      else await entry.discard()
      home.forsake(entry, 'shut down')
    }))
    await Promise.all(this.#writes.values())
  }

  #unpark (entry: Entry): Parked | undefined {
    const parked = this.#parked.get(entry.ref)
    if (parked === undefined) return undefined
    clearTimeout(parked.timer)
    this.#parked.delete(entry.ref)
    return parked
  }

  /** Keeps the entry's record in the store, if it can outlive the process. */
  #keep (entry: Entry, owner: string | undefined, expiresAt: number): Promise<boolean> | undefined {
    if (this.#keeping === undefined) return undefined
    const record = keptRecord(entry, owner, expiresAt)
    if (record === 'meta') {
      this.#sayNotKept(entry.config)
      return undefined
    }
    if (record === undefined) return undefined
    const { store } = this.#keeping
    this.#inStore(entry.ref, async () => await store.park(record), 'could not be kept in the store: it waits for its ref in this process only')
    return this.#writes.get(entry.ref)
  }

  /** The entry left: so does its record. */
  #unkeep (parked: Parked): void {
    if (parked.kept === undefined) return
    const { store } = this.#keeping!
    const ref = parked.entry.ref
    this.#inStore(ref, async () => await store.forget(ref), 'could not be removed from the store: it goes when it expires there')
  }

  /**
   * Runs a store operation on a ref's record once the earlier ones settled. `#writes`
   * holds it, until it settled if no other follows: a promise of whether it succeeded (a
   * failure is logged), which never rejects.
   */
  #inStore (ref: string, operation: () => Promise<unknown>, failure: string): void {
    const { log } = this.#keeping!
    const run: Promise<boolean> = (this.#writes.get(ref) ?? Promise.resolve(true)).then(operation).then(() => true, (err: unknown) => {
      log.error({ err, ref }, `a finished upload waiting for its ref ${failure}`)
      return false
    }).then((succeeded) => {
      if (this.#writes.get(ref) === run) this.#writes.delete(ref)
      return succeeded
    })
    this.#writes.set(ref, run)
  }

  /** Once per upload config: its writer's meta cannot be kept, so its finished entries wait in this process only. */
  #sayNotKept (config: ResolvedConfig): void {
    if (this.#notKept.has(config.key)) return
    this.#notKept.add(config.key)
    this.#keeping!.log.warn({ uploadName: config.uploadName, config: config.key }, `finished uploads of "${config.uploadName}" wait for their ref in this process only, not across a restart: their writer's meta is not JSON`)
  }
}
