// One resumable upload: an entry that lives across requests. It holds the upload's
// length, metadata and timers, lets one request at a time write to it (a newer request
// pre-empts the older one), and appends a request body to the entry with backpressure.
// A client that goes away detaches: what the writer accepted stays, the entry lives on.
// A durable upload (its writer can checkpoint and restore) also has a record in the
// store, under the store's lock while this process holds it: the offset a client is told
// is the one its last checkpoint saved there, and another process can go on from it.
import type { Readable } from 'node:stream'
import type { ResolvedConfig } from '../../config.js'
import type { Entry } from '../../entry.js'
import type { Uploads } from '../../uploads.js'
import type { EntryFailure } from '../../errors.js'
import type { HeldLock, Store, UploadRecord } from '../../stores/store.js'
import { Feed, StreamSource, type FeedTarget } from '../../feed.js'
import { bodyStreamFailure } from '../route-body.js'
import { SilenceTimer } from '../../silence.js'

/** How an append ended; a body that could not be read (its stream failed) ends it with that failure. */
export type AppendEnd = 'end' | 'stopped' | 'aborted' | 'timeout' | 'limit' | 'failed' | EntryFailure

/** Why an upload is gone: what later requests for it are told (410, or 503 at shutdown). */
export type GoneReason = 'terminated' | 'expired' | 'unclaimed' | 'failed' | 'consumed' | 'concatenated' | 'shut down'

/** A place an upload takes among the endpoint's limits (maxEntries, maxResumableUploads), from before its writer starts until it ends. */
export interface Slot { readonly owner: string | undefined, readonly config: ResolvedConfig, readonly partial: boolean }

interface Holder { stop: (() => void) | undefined, released: Promise<void> }

export interface UploadInit {
  entry: Entry
  /** The upload set its entry reports to: its events (progress, done, error, cancel) are heard there. */
  home: Uploads
  config: ResolvedConfig
  owner: string | undefined
  length: number | undefined
  metadata: string | undefined
  /** 'partial' uploads are staged for a later 'final' one; 'final' ones are concatenations. */
  concat: 'partial' | 'final' | undefined
  concatHeader: string | undefined
  /** Idle time (no request, no byte) before the upload expires, and its longest life, in ms. */
  expiry: number
  maxLifetime: number
  /** Called once when the upload expires. */
  onExpire: (upload: ResumableUpload) => void
  /** The place it took among the limits, reserved before its creation awaited anything. */
  slot: Slot
  /** Where its record is kept: given for a durable upload only. */
  store?: Store | undefined
  /** For an upload continued from its record: when it was created, the offset saved, and the store's lock on it, already held. */
  createdAt?: number
  saved?: number
  lock?: HeldLock
}

/** How long another holder of an upload's store lock is given to let go, past which it is presumed dead. */
export function lockTimeout (config: ResolvedConfig): number {
  // A writer call in flight (writerTimeout), then a checkpoint (writerTimeout), then a write of its record.
  return 2 * config.writerTimeout + 5_000
}

export class ResumableUpload {
  readonly entry: Entry
  readonly home: Uploads
  readonly config: ResolvedConfig
  readonly owner: string | undefined
  readonly metadata: string | undefined
  readonly concat: 'partial' | 'final' | undefined
  readonly concatHeader: string | undefined
  readonly slot: Slot
  /** Known length of the whole upload; undefined while deferred. */
  length: number | undefined
  readonly createdAt: number
  /** Why it ended, once it did: set when the registry removes it. */
  ended: GoneReason | undefined
  /**
   * Its URL was given to the client (its creation answered, or it was restored): only
   * then is it kept at shutdown, since nobody else could go on with it.
   */
  announced = false
  /** This process let it go and keeps its record for whoever goes on (shutdown, or another holder): its last save is still due. */
  kept = false
  readonly #store: Store | undefined
  /** The store's lock on its record, while this process holds the upload. */
  #lock: HeldLock | undefined
  /** The offset its record holds: what the last checkpoint made durable. */
  #saved: number
  /** Its writer had its last call in this process (a checkpoint told `last`): no call follows here. */
  #writerLetGo = false
  readonly #expiry: number
  readonly #deadline: number
  #expiresAt = 0
  readonly #idleTimer: NodeJS.Timeout
  readonly #lifeTimer: NodeJS.Timeout
  #timersStopped = false
  #holder: Holder | undefined
  /** Final uploads reading this (partial) upload's bytes right now. */
  #readers = 0
  /** A discard asked for while it was being read: it happens after the last reader. */
  #discard: { done: Promise<void>, run: () => void } | undefined

  constructor (init: UploadInit) {
    this.entry = init.entry
    this.home = init.home
    this.config = init.config
    this.owner = init.owner
    this.length = init.length
    this.metadata = init.metadata
    this.concat = init.concat
    this.concatHeader = init.concatHeader
    this.slot = init.slot
    this.#store = init.store
    this.createdAt = init.createdAt ?? Date.now()
    this.#saved = init.saved ?? 0
    this.#lock = init.lock
    this.#expiry = init.expiry
    this.#deadline = this.createdAt + init.maxLifetime
    const expire = (): void => {
      this.stopTimers()
      init.onExpire(this)
    }
    this.#idleTimer = setTimeout(expire, init.expiry)
    this.#lifeTimer = setTimeout(expire, this.#deadline - Date.now())
    // Waiting uploads alone must not keep the process alive.
    this.#idleTimer.unref()
    this.#lifeTimer.unref()
    this.touch()
  }

  get id (): string { return this.entry.ref }

  /**
   * The offset a client is told and resumes from: for a durable upload, what its last
   * checkpoint saved; otherwise (and once complete) the bytes that went through settled
   * `writeChunk` calls.
   */
  get offset (): number { return this.durable && !this.complete ? this.#saved : this.entry.bytesReceived }

  /** Whether it has a record in the store (its writer can checkpoint and restore). */
  get durable (): boolean { return this.#store !== undefined }

  /**
   * A new durable upload's record: the store's lock taken (`onStopRequested`: another
   * process wants it), a first checkpoint, the record created. Rejects if any fails,
   * holding nothing.
   */
  async createRecord (onStopRequested: () => void): Promise<void> {
    this.#lock = await this.#store!.lock(this.id, onStopRequested, lockTimeout(this.config))
    try {
      const snapshot = await this.entry.checkpoint()
      await this.#store!.createUpload(this.#record(snapshot))
    } catch (error) {
      await this.letGo()
      throw error
    }
  }

  /**
   * Makes what the writer accepted durable and saves it in the record, so the offset
   * clients are told moves on. Between writer calls, with the upload held. `last`: the
   * writer makes no further call here (see CheckpointInfo). Nothing to do for an upload
   * that is not durable, no longer uploading, or ended (unless it is kept).
   */
  async save (last = false): Promise<void> {
    if (!this.durable || this.entry.status !== 'uploading' || (this.ended !== undefined && !this.kept) || this.#writerLetGo) return
    this.#writerLetGo = last
    const snapshot = await this.entry.checkpoint(last)
    await this.#store!.updateUpload(this.id, { offset: this.#saved, token: this.#lock!.token }, {
      offset: snapshot.offset, snapshot, length: this.length, expiresAt: this.expiresAt
    })
    this.#saved = snapshot.offset
  }

  /** Saves its expiry in its record (with the offset unchanged): after activity without bytes, on a live upload. */
  async saveExpiry (): Promise<void> {
    // A complete one has no record any more.
    if (!this.durable || this.complete) return
    await this.#store!.updateUpload(this.id, { offset: this.#saved, token: this.#lock!.token }, { expiresAt: this.expiresAt })
  }

  /**
   * The writer's last call here, without saving (another holder goes on from the record):
   * a checkpoint told `last`, whose failure changes nothing. No save follows it.
   */
  async releaseWriter (): Promise<void> {
    this.#writerLetGo = true
    await this.entry.checkpoint(true).catch(() => {})
  }

  /** Its record is removed (it finished or ended), and its lock let go. Idempotent. */
  async dropRecord (): Promise<void> {
    if (this.#lock === undefined) return
    try {
      await this.#store!.deleteUpload(this.id)
    } finally {
      await this.letGo()
    }
  }

  /** Lets the store's lock go, keeping the record (another process may go on). Idempotent. */
  async letGo (): Promise<void> {
    const lock = this.#lock
    this.#lock = undefined
    await lock?.release()
  }

  #record (snapshot: UploadRecord['snapshot']): UploadRecord {
    return {
      id: this.id,
      configKey: this.config.key,
      owner: this.owner,
      length: this.length,
      offset: this.#saved,
      metadata: this.metadata,
      concat: this.concat,
      snapshot,
      createdAt: this.createdAt,
      expiresAt: this.expiresAt
    }
  }

  get complete (): boolean { return this.entry.status === 'done' }

  /** When the upload expires if nothing happens (idle time, capped by its lifetime). */
  get expiresAt (): number { return this.#expiresAt }

  /** Activity: the idle clock starts again (unless the upload no longer expires). */
  touch (): void {
    this.#expiresAt = Math.min(Date.now() + this.#expiry, this.#deadline)
    if (!this.#timersStopped) this.#idleTimer.refresh()
  }

  /** Finished (it waits for its ref) or ended: it expires no more. */
  stopTimers (): void {
    this.#timersStopped = true
    clearTimeout(this.#idleTimer)
    clearTimeout(this.#lifeTimer)
  }

  /** The upload ended (deleted, expired, shut down): whoever is writing to it stops reading at once. */
  interrupt (): void {
    this.#holder?.stop?.()
  }

  /**
   * A final upload reads this partial: until the returned release is called (once), a discard
   * (DELETE, expiry, shutdown, another final) waits, so the bytes stay readable.
   */
  hold (): () => void {
    this.#readers++
    return () => {
      if (--this.#readers === 0) this.#discard?.run()
    }
  }

  /** Removes a finished upload's bytes (the writer's discard), once nobody reads them; `consumed`: a final upload took them. */
  async discard (consumed = false): Promise<void> {
    if (this.#readers === 0) return await this.entry.discard(consumed)
    if (this.#discard === undefined) {
      let run!: () => void
      const done = new Promise<void>((resolve) => { run = resolve }).then(async () => await this.entry.discard(consumed))
      this.#discard = { done, run }
    }
    return await this.#discard.done
  }

  /**
   * Waits until no other request holds the upload, asking any holder to stop (it
   * stops reading at once, and lets go once its writer call in flight settled).
   * Returns the release function. No polling: each waiter awaits the holder's release.
   */
  async acquire (stop?: () => void): Promise<() => void> {
    while (this.#holder !== undefined) {
      const holder = this.#holder
      holder.stop?.()
      await holder.released
    }
    let release!: () => void
    const released = new Promise<void>((resolve) => { release = resolve })
    const holder: Holder = { stop, released }
    this.#holder = holder
    return () => {
      if (this.#holder === holder) this.#holder = undefined
      this.touch()
      release()
    }
  }

  /**
   * `acquire` for an append, whose stop is known only once its feed starts: `onStop`
   * (AppendOptions) registers it. Asked to stop before then, the holder stops as soon
   * as it registers it: a newer request never waits for a holder that has not begun.
   */
  async acquireToAppend (): Promise<{ release: () => void, onStop: (stop: () => void) => void }> {
    let asked = false
    let stop: () => void = () => { asked = true }
    const release = await this.acquire(() => stop())
    return {
      release,
      onStop: (fn) => {
        stop = fn
        if (asked) fn()
      }
    }
  }
}

export interface AppendOptions {
  /** Most bytes this append may bring. */
  limit: number
  /** Client silence that ends the append, in ms. */
  idle: number
  /** Registers the function that stops the append (pre-emption). */
  onStop: (stop: () => void) => void
  /** Where the bytes go: the entry's writer, unless they must be staged first (checksums). */
  sink?: (chunk: Buffer) => Promise<void>
}

/**
 * Feeds a request body to the entry (one feed, lib/feed.ts), one buffer at a time, reading
 * the next only once `writeChunk` settled. Resolves with how it ended; never rejects.
 */
export async function append (upload: ResumableUpload, body: Readable, options: AppendOptions): Promise<AppendEnd> {
  const target: FeedTarget = options.sink === undefined ? upload.entry : { write: options.sink }
  // The append's own silence (what it counts: lib/feed.ts): past it, the append ends 'timeout'.
  const silence = new SilenceTimer(options.idle, () => { feed.end('timeout') })
  const feed = new Feed(target, {
    silence,
    limit: options.limit,
    onStop: options.onStop,
    // Each accepted chunk is activity: the upload does not expire while bytes flow.
    onWritten: () => upload.touch()
  })
  const how = await feed.run(new StreamSource(body))
  silence.stop()
  return how instanceof Error ? endOfError(how) : how
}

/** A body stream's error: the client gone (the append is cut), or a body that could not be read. */
function endOfError (error: Error): AppendEnd {
  const failure = bodyStreamFailure(error)
  return failure.code === 'FST_CHUNKED_UPLOAD_PREMATURE_CLOSE' ? 'aborted' : failure
}
