// Every resumable upload this process holds, by id: the ids of recent ended ones (a
// later request hears why it ended), and the slots uploads take among the limits. A
// durable upload's record stays in the store when this process lets it go (shutdown,
// or another process asking for it), so a later request, here or elsewhere, continues it.
import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import { StoreFailureError, TooManyFilesError, UploadMovedError, TooManyUploadsError, UploadGoneError, type EntryFailure } from '../../errors.js'
import type { GoneReason, ResumableUpload, Slot } from './upload.js'

/** Ids of uploads that ended, remembered so later requests get 410 rather than 404. */
const GONE_MEMORY = 10_000
/** What a 410 says, in words, for each way an upload ends. */
const GONE_WORDS: Record<Exclude<GoneReason, 'shut down'>, string> = {
  terminated: 'it was terminated (DELETE)',
  expired: 'it expired (no request within resumableExpiry, or past resumableMaxLifetime)',
  unclaimed: 'it was complete, but no request claimed it within entryTtl',
  failed: 'its writer failed',
  consumed: 'it was consumed by a request to its route',
  concatenated: 'it was concatenated into a final upload'
}
/** The error a request gets for an upload that ended: 410 saying why in words (see `whyGone` for a shutdown). */
export function goneError (reason: Exclude<GoneReason, 'shut down'> | undefined): Error {
  // Forgotten (past GONE_MEMORY) while a request still held it: it ended, we no longer know how.
  return new UploadGoneError(reason === undefined ? 'it ended' : GONE_WORDS[reason])
}

/**
 * Every resumable upload of the plugin, by id, the ids of recent ended ones, and the
 * slots uploads take among the limits: per owner (maxEntries) and per process (maxUploads).
 */
export class ResumableRegistry {
  readonly #uploads = new Map<string, ResumableUpload>()
  readonly #gone = new Map<string, GoneReason>()
  /** Slots of live uploads and of creations still starting their writer. */
  readonly #slots = new Set<Slot>()
  readonly #maxUploads: number
  /** Restores in progress, by id: concurrent requests for one upload wait for the same. */
  readonly #restoring = new Map<string, Promise<ResumableUpload | GoneReason | undefined>>()
  readonly #log: FastifyBaseLogger
  /** Set at shutdown: the plugin's one reason, what every later request is answered. */
  #shutDown: EntryFailure | undefined

  constructor (maxUploads: number, log: FastifyBaseLogger) {
    this.#maxUploads = maxUploads
    this.#log = log
  }

  /** Whether the plugin is shutting down (no upload is created or continued here any more). */
  get shuttingDown (): boolean { return this.#shutDown !== undefined }

  /**
   * Takes a slot for a new upload, synchronously (before its creation awaits anything),
   * or throws: 503 past maxUploads; 413 past `cap` uploads of this owner for this upload
   * name. An anonymous owner (undefined) is everyone without an owner: one of them must
   * not lock the others out, so only maxUploads bounds them.
   */
  reserve (owner: string | undefined, config: ResolvedConfig, partial: boolean, cap: number): Slot {
    if (this.#shutDown !== undefined) throw this.#shutDown
    if (this.#slots.size >= this.#maxUploads) throw new TooManyUploadsError(this.#maxUploads)
    if (owner !== undefined) {
      let count = 0
      for (const slot of this.#slots) if (slot.owner === owner && slot.config.key === config.key && slot.partial === partial) count++
      if (count >= cap) throw new TooManyFilesError(config.uploadName, cap)
    }
    const slot: Slot = { owner, config, partial }
    this.#slots.add(slot)
    return slot
  }

  /** A creation that failed before its upload was added gives its slot back. */
  release (slot: Slot): void {
    this.#slots.delete(slot)
  }

  /**
   * Adds an upload: a created durable one with its record (made now), a restored one
   * with the lock it holds. After shutdown began, or when the record cannot be made,
   * throws (its creator ends it).
   */
  async add (upload: ResumableUpload, restored = false): Promise<void> {
    if (this.#shutDown !== undefined) throw this.#shutDown
    if (upload.durable && !restored) {
      await upload.createRecord(() => this.letGoOf(upload))
      // The server began shutting down meanwhile: the upload never was.
      if (this.#shutDown !== undefined) {
        await upload.dropRecord()
        throw this.#shutDown
      }
    }
    this.#uploads.set(upload.id, upload)
  }

  /** Another holder asks for a durable upload: this process saves it and lets it go (see #letGo). Never rejects. */
  letGoOf (upload: ResumableUpload): void {
    this.#letGo(upload).catch((err: unknown) => this.#log.error({ err, ref: upload.id }, 'resumable upload could not be handed over'))
  }

  find (id: string): ResumableUpload | GoneReason | undefined {
    return this.#uploads.get(id) ?? this.#gone.get(id)
  }

  /**
   * The upload `id` continued from its record (`restore`), once even for requests that
   * ask at the same time: they all get the same upload, or the same failure.
   */
  async restore (id: string, restore: () => Promise<ResumableUpload | GoneReason | undefined>): Promise<ResumableUpload | GoneReason | undefined> {
    // Restored (or ended) while this request read the record.
    const found = this.find(id)
    if (found !== undefined) return found
    let restoring = this.#restoring.get(id)
    if (restoring === undefined) {
      restoring = restore().finally(() => this.#restoring.delete(id))
      this.#restoring.set(id, restoring)
    }
    return await restoring
  }

  /**
   * What a request for an upload that ended is told: why (410), or the shutdown (503);
   * forgotten (past GONE_MEMORY), that it ended.
   */
  whyGone (reason: GoneReason | undefined): Error {
    // Let go by this process: shutting down (503), or taken over by another holder (503, try again).
    if (reason === 'shut down') return this.#shutDown ?? new UploadMovedError()
    return goneError(reason)
  }

  /** Ends an upload's registration; with a reason, later requests to its URL get 410 saying it, else 404. */
  remove (upload: ResumableUpload, reason: GoneReason | undefined): void {
    if (!this.#unlist(upload)) return
    if (reason !== undefined) this.remember(upload.id, reason)
    upload.ended = reason ?? 'failed'
    upload.interrupt()
    // Ended for good: its record goes.
    this.dropRecord(upload).catch(() => {})
  }

  /** Lists the upload no more (its timers stopped, its slot free); false if it was not listed. */
  #unlist (upload: ResumableUpload): boolean {
    if (this.#uploads.get(upload.id) !== upload) return false
    upload.stopTimers()
    this.#uploads.delete(upload.id)
    this.#slots.delete(upload.slot)
    return true
  }

  /** Later requests for `id` are told it ended, and why. */
  remember (id: string, reason: GoneReason): void {
    this.#gone.set(id, reason)
    if (this.#gone.size > GONE_MEMORY) this.#gone.delete(this.#gone.keys().next().value!)
  }

  /** An upload's record removed (it finished or ended). Never rejects: a failure is logged (the sweep removes the record once it expires). */
  async dropRecord (upload: ResumableUpload): Promise<void> {
    await upload.dropRecord().catch((err: unknown) => this.#log.error({ err, ref: upload.id }, 'resumable upload record could not be removed'))
  }

  /**
   * This process lets a durable upload go, keeping its record: whoever writes to it stops
   * (and saves), a last checkpoint saves what the writer holds, and the store's lock is
   * released. Its writer gets no close here: it gets it in the process that goes on.
   */
  async #letGo (upload: ResumableUpload): Promise<void> {
    if (!this.#unlist(upload)) return
    // At shutdown, later requests here are told so (503); otherwise they find its record.
    if (this.#shutDown !== undefined) this.remember(upload.id, 'shut down')
    upload.ended = 'shut down'
    upload.kept = true
    upload.interrupt()
    const release = await upload.acquire()
    try {
      await upload.save(true)
    } finally {
      release()
      await upload.letGo()
    }
  }

  /** A request that waited for the upload may find it ended meanwhile (deleted, expired…): it is told why. */
  assertLive (upload: ResumableUpload): void {
    if (this.#uploads.get(upload.id) !== upload) throw this.whyGone(upload.ended)
  }

  /**
   * Saves what a durable upload's writer accepted (ResumableUpload.save). One that cannot
   * be saved ends now: its checkpoint failed (its writer's failure is the answer), or its
   * record could not be written (the upload is cancelled, and the store's error says why).
   */
  async save (upload: ResumableUpload): Promise<void> {
    try {
      await upload.save()
    } catch (error) {
      if (upload.entry.failure !== undefined) throw this.endedDuring(upload)
      if ((error as { code?: unknown }).code === 'FST_CHUNKED_UPLOAD_STALE_UPDATE') throw await this.#takenOver(upload)
      this.remove(upload, 'failed')
      const failure = new StoreFailureError({ cause: error })
      this.#log.error({ err: error, ref: upload.id }, 'resumable upload could not be saved: it ends')
      await upload.entry.cancel(failure)
      throw failure
    }
  }

  /** Saves an upload's expiry in its record (ResumableUpload.saveExpiry). Never rejects: a failure is logged, and the record keeps its older expiry. */
  async saveExpiry (upload: ResumableUpload): Promise<void> {
    await upload.saveExpiry().catch((err: unknown) => this.#log.warn({ err, ref: upload.id }, 'resumable upload expiry could not be saved'))
  }

  /**
   * Another holder took the upload over (this one was presumed dead, its save fenced
   * off): it goes on there, from its record. This process lets go without a call that
   * could undo it (no close: that would remove the file), and the request is told to
   * try again (503).
   */
  async #takenOver (upload: ResumableUpload): Promise<Error> {
    this.#unlist(upload)
    upload.ended = 'shut down'
    upload.kept = true
    upload.interrupt()
    this.#log.warn({ ref: upload.id }, 'resumable upload was taken over by another holder: this process lets it go')
    await upload.releaseWriter()
    await upload.letGo()
    return new UploadMovedError()
  }

  /**
   * The entry ended during a request: its writer failed (the upload ends now, and the
   * writer's failure is the answer), or someone else ended it (DELETE, expiry,
   * shutdown), who removed it first, saying why.
   */
  endedDuring (upload: ResumableUpload): Error {
    if (this.#uploads.get(upload.id) !== upload) return this.whyGone(upload.ended)
    this.remove(upload, 'failed')
    return upload.entry.failure!
  }

  /**
   * Shutdown: no new upload; appends in flight stop and answer 503. Unfinished durable
   * uploads are saved and kept for the next process; other unfinished uploads are
   * cancelled, staged partials removed.
   */
  async shutdown (failure: EntryFailure): Promise<void> {
    this.#shutDown = failure
    await Promise.all([...this.#uploads.values()].map(async (upload) => {
      // Kept only if its client knows its URL (a creation cut by the shutdown is not).
      if (upload.durable && !upload.complete && upload.announced) {
        // A writer that fails its last checkpoint was closed by it: nothing more to do.
        return await this.#letGo(upload).catch((err: unknown) => this.#log.error({ err, ref: upload.id }, 'resumable upload could not be saved at shutdown'))
      }
      this.remove(upload, 'shut down')
      if (upload.complete && upload.concat === 'partial') await upload.discard()
      else await upload.entry.cancel(failure)
    }))
  }
}
