// request.uploads: the entries of one request (or socket), their validation on
// arrival, consumption, cancellation, and their discard when the request ends.
import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { ConsumeFn, RequestUploads, UploadEntry, UploadError, WriterSnapshot } from '../types/index.js'
import { isAccepted, type ResolvedConfig } from './config.js'
import { Entry, type ClientInfo } from './entry.js'
import {
  InProgressError, NotAcceptedError, TooLargeError, TooManyFilesError, UnknownEntryError, ValidateFailureError,
  invalidEntry, type EntryFailure
} from './errors.js'
import type { EntryHome, RefStore } from './refs.js'

function isPostpone (value: unknown): value is { postpone: unknown } {
  return value !== null && typeof value === 'object' && Object.hasOwn(value, 'postpone')
}

/** Which event an entry's report is, by its status. */
const EVENTS = { pending: 'progress', uploading: 'progress', done: 'done', failed: 'error', cancelled: 'cancel' } as const

export class Uploads extends EventEmitter implements RequestUploads, EntryHome {
  readonly configs: ReadonlyMap<string, ResolvedConfig>

  readonly #entries: Entry[] = []
  /** Entries another set holds, listed here too (see `include`). */
  readonly #included = new Set<Entry>()
  /** Its request, until the set ends (its finished entries may wait long for their ref). */
  #request: FastifyRequest | undefined
  readonly #log: FastifyBaseLogger
  /** Per upload name, the entries that passed validation: what `maxEntries` counts. */
  readonly #accepted = new Map<string, number>()
  #aborted: EntryFailure | undefined
  /** Aborted with the first reason the uploads stopped: the transport reading them stops too. */
  readonly #stop = new AbortController()
  #aborting: Promise<void> | undefined
  #ended: Promise<void> | undefined
  /** Channel uploads: finished entries wait in the store for their ref, whatever becomes of the socket. */
  #hold: { store: RefStore, owner: string | undefined } | undefined

  /**
   * `request`: the one whose entries these are, undefined for uploads that outlive any
   * request (resumable ones: each entry is told which request carries its bytes, see
   * `announce`). `log`: where the set and its entries log.
   */
  constructor (configs: ReadonlyMap<string, ResolvedConfig>, request: FastifyRequest | undefined, log: FastifyBaseLogger) {
    super()
    this.configs = configs
    this.#request = request
    this.#log = log
  }

  get aborted (): EntryFailure | undefined { return this.#aborted }

  /** Aborted (its reason: `aborted`) when the uploads must stop: what reads them for a transport listens. */
  get signal (): AbortSignal { return this.#stop.signal }

  /** From now on, finished entries outlive these uploads: parked under `owner` until claimed or expired. */
  holdFinished (store: RefStore, owner: string | undefined): void {
    this.#hold = { store, owner }
  }

  /**
   * Takes a finished entry another upload set parked (a ref the client submitted):
   * it counts toward `maxEntries` and is consumed, or discarded, like the others.
   */
  adopt (entry: Entry): void {
    this.#entries.push(entry)
    this.#accepted.set(entry.uploadName, this.acceptedCount(entry.uploadName) + 1)
  }

  /**
   * Lists an entry another upload set holds (a resumable one a channel socket feeds): its
   * events are heard here (`relay`), and it can be consumed or cancelled here, as one of
   * ours. But its life is its own set's: not counted toward `maxEntries`, not cancelled
   * when these uploads stop, nor discarded when they end. `forsake` takes it off the list.
   */
  include (entry: Entry): void {
    this.#entries.push(entry)
    this.#included.add(entry)
  }

  /** Tells this set's listeners of a change of an entry (progress, or its end). */
  relay (entry: Entry): void {
    const event = EVENTS[entry.status]
    // An 'error' event without a listener would throw: nobody asked, nobody is told.
    if (event !== 'error' || this.listenerCount('error') > 0) this.emit(event, entry)
  }

  /** Entries of `uploadName` that passed validation so far. */
  acceptedCount (uploadName: string): number {
    return this.#accepted.get(uploadName) ?? 0
  }

  /** A request claimed one of our parked entries: it is no longer ours to list or discard. */
  forsake (entry: Entry): void {
    const at = this.#entries.indexOf(entry)
    if (at !== -1) this.#entries.splice(at, 1)
    this.#included.delete(entry)
  }

  #onReport (entry: Entry): void {
    if (entry.status === 'done' && this.#hold !== undefined) this.#hold.store.park(entry, this.#hold.owner, this)
    this.relay(entry)
  }

  /**
   * A transport announces a file. The entry is validated against its upload name's
   * config (count, type, declared size, `validate`) and returned, refused or pending.
   * `request`: the one announcing it, when these uploads have none of their own.
   */
  async announce (config: ResolvedConfig, info: ClientInfo, request = this.#request): Promise<Entry> {
    const entry = new Entry(config, info, request, this.#log, (e) => this.#onReport(e))
    const { uploadName } = config
    const accepted = this.acceptedCount(uploadName)
    this.#entries.push(entry)
    const refusal = this.#aborted ??
      (accepted >= config.maxEntries
        ? new TooManyFilesError(uploadName, config.maxEntries)
        : !isAccepted(config.accept, info.clientName, info.clientType)
            ? new NotAcceptedError(info.clientName, info.clientType, uploadName)
            : info.clientSize !== undefined && info.clientSize > config.maxFileSize
              ? new TooLargeError(info.clientName, uploadName, config.maxFileSize)
              : await this.#validate(config, entry))
    if (refusal !== undefined) entry.refuse(refusal)
    else this.#accepted.set(uploadName, accepted + 1)
    return entry
  }

  /**
   * An entry a store kept, continued (a resumable upload after a restart): it was
   * validated when it was created, so it is only counted here, and its writer restored
   * from `snapshot`. Rejects with the entry's failure; the entry is listed either way.
   */
  async restore (config: ResolvedConfig, info: ClientInfo, request: FastifyRequest, snapshot: WriterSnapshot): Promise<Entry> {
    const entry = new Entry(config, info, request, this.#log, (e) => this.#onReport(e))
    this.#entries.push(entry)
    this.#accepted.set(config.uploadName, this.acceptedCount(config.uploadName) + 1)
    await entry.resume(snapshot)
    return entry
  }

  async #validate (config: ResolvedConfig, entry: Entry): Promise<EntryFailure | undefined> {
    if (config.validate === undefined) return undefined
    let code: unknown
    try {
      code = await config.validate(entry)
    } catch (error) {
      // A throwing validate is a server bug: a 500 that keeps its message on the server.
      this.#log.error({ err: error, ref: entry.ref }, 'upload validate callback failed')
      return new ValidateFailureError(entry.clientName, { cause: error })
    }
    if (typeof code !== 'string' || code === '') return undefined
    return invalidEntry(entry.clientName, entry.uploadName, code)
  }

  /**
   * Stops every unfinished entry with `'cancel'` and aborts `signal`. Idempotent:
   * the first reason wins.
   */
  abort (error: EntryFailure): Promise<void> {
    if (this.#aborting === undefined) {
      this.#aborted = error
      this.#stop.abort(error)
      const own = this.#entries.filter((entry) => !this.#included.has(entry))
      this.#aborting = Promise.all(own.map((entry) => entry.cancel(error))).then(() => {})
    }
    // A later caller (shutdown) waits for the same cancellations to finish.
    return this.#aborting
  }

  /**
   * The request or socket is over: cancel what is unfinished, discard what nobody
   * consumed. Idempotent: every caller gets the same completion.
   */
  end (reason: EntryFailure): Promise<void> {
    this.#request = undefined
    this.#ended ??= this.abort(reason).then(async () => {
      // Entries being consumed are their consumer's; parked ones wait for their ref.
      const unclaimed = this.#entries.filter((e) => e.holder === 'uploads' && !this.#included.has(e))
      await Promise.all(unclaimed.map((e) => e.discard()))
    })
    return this.#ended
  }

  entries (uploadName: string): { completed: UploadEntry[], inProgress: UploadEntry[] } {
    const completed: UploadEntry[] = []
    const inProgress: UploadEntry[] = []
    for (const entry of this.#entries) {
      if (entry.uploadName !== uploadName || entry.released) continue
      if (entry.status === 'done') completed.push(entry)
      else if (!entry.ended) inProgress.push(entry)
    }
    return { completed, inProgress }
  }

  async consume<Meta = any, T = unknown> (uploadName: string, fn: ConsumeFn<Meta, T>): Promise<T[]> {
    const { completed, inProgress } = this.entries(uploadName)
    if (inProgress.length > 0) throw new InProgressError(uploadName)
    // All of them are the consumer's from now on: a disconnect meanwhile must not
    // discard an entry before its turn comes.
    for (const entry of completed) this.#take(entry as Entry)
    const results: T[] = []
    try {
      for (const entry of completed) results.push(await this.#consumeOne(entry as Entry, fn))
    } finally {
      for (const entry of completed) await this.#release(entry as Entry)
    }
    return results
  }

  async consumeEntry<Meta = any, T = unknown> (ref: string, fn: ConsumeFn<Meta, T>): Promise<T> {
    const entry = this.#entries.find((e) => e.ref === ref && e.status === 'done' && !e.released)
    if (entry === undefined) throw new UnknownEntryError(ref)
    this.#take(entry)
    try {
      return await this.#consumeOne(entry, fn)
    } finally {
      await this.#release(entry)
    }
  }

  /** Runs the consumer on one entry; the entry is consumed unless the result is `{ postpone }`. */
  async #consumeOne<Meta, T> (entry: Entry, fn: ConsumeFn<Meta, T>): Promise<T> {
    let result: T | { postpone: T }
    try {
      result = await fn(entry.meta() as Meta, entry)
    } catch (error) {
      // A consumer that throws still took the entry (as LiveView does).
      await entry.discard(true)
      throw error
    }
    if (isPostpone(result)) return result.postpone as T
    await entry.discard(true)
    return result as T
  }

  /** A consumer takes the entry: it is not discarded, nor claimable by ref, meanwhile. */
  #take (entry: Entry): void {
    this.#hold?.store.forget(entry)
    entry.holder = 'consumer'
  }

  /**
   * The consumer is done with an entry. One it postponed waits for its ref again (channel),
   * or, if the request ended meanwhile, is discarded: nobody else can take it.
   */
  async #release (entry: Entry): Promise<void> {
    if (entry.released) return
    entry.holder = 'uploads'
    if (this.#hold !== undefined) this.#hold.store.park(entry, this.#hold.owner, this)
    else if (this.#ended !== undefined) await entry.discard()
  }

  errors (uploadName?: string): UploadError[] {
    const errors: UploadError[] = []
    for (const entry of this.#entries) {
      if (uploadName !== undefined && entry.uploadName !== uploadName) continue
      for (const code of entry.errors) errors.push({ uploadName: entry.uploadName, ref: entry.ref, clientName: entry.clientName, code })
    }
    return errors
  }

  async cancel (ref: string): Promise<void> {
    const entry = this.#entries.find((e) => e.ref === ref)
    if (entry === undefined) return
    if (entry.status !== 'done') return await entry.cancel()
    this.#hold?.store.forget(entry)
    await entry.discard()
  }
}
