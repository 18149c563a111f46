// Every resumable upload of the plugin instance, by id: the ids of recent ended ones (a
// later request hears why it ended), and the slots uploads take among the limits.
import type { ResolvedConfig } from '../../config.js'
import { TooManyFilesError, TooManyUploadsError, UploadGoneError, type EntryFailure } from '../../errors.js'
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
  /** Set at shutdown: the plugin's one reason, what every later request is answered. */
  #shutDown: EntryFailure | undefined

  constructor (maxUploads: number) {
    this.#maxUploads = maxUploads
  }

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

  /** Adds a created upload; after shutdown began, throws (its creator ends it). */
  add (upload: ResumableUpload): void {
    if (this.#shutDown !== undefined) throw this.#shutDown
    this.#uploads.set(upload.id, upload)
  }

  find (id: string): ResumableUpload | GoneReason | undefined {
    return this.#uploads.get(id) ?? this.#gone.get(id)
  }

  /**
   * What a request for an upload that ended is told: why (410), or the shutdown (503);
   * forgotten (past GONE_MEMORY), that it ended.
   */
  whyGone (reason: GoneReason | undefined): Error {
    return reason === 'shut down' ? this.#shutDown! : goneError(reason)
  }

  /** Ends an upload's registration; with a reason, later requests to its URL get 410 saying it, else 404. */
  remove (upload: ResumableUpload, reason: GoneReason | undefined): void {
    if (this.#uploads.get(upload.id) !== upload) return
    upload.stopTimers()
    this.#uploads.delete(upload.id)
    this.#slots.delete(upload.slot)
    if (reason !== undefined) this.#gone.set(upload.id, reason)
    if (this.#gone.size > GONE_MEMORY) this.#gone.delete(this.#gone.keys().next().value!)
    upload.interrupt()
  }

  /** A request that waited for the upload may find it ended meanwhile (deleted, expired…): it is told why. */
  assertLive (upload: ResumableUpload): void {
    if (this.#uploads.get(upload.id) !== upload) throw this.whyGone(this.#gone.get(upload.id))
  }

  /**
   * The entry ended during a request: its writer failed (the upload ends now, and the
   * writer's failure is the answer), or someone else ended it (DELETE, expiry,
   * shutdown), who removed it first, saying why.
   */
  endedDuring (upload: ResumableUpload): Error {
    if (this.#uploads.get(upload.id) !== upload) return this.whyGone(this.#gone.get(upload.id))
    this.remove(upload, 'failed')
    return upload.entry.failure!
  }

  /**
   * Shutdown: no new upload; appends in flight stop and answer 503; unfinished uploads
   * are cancelled, staged partials removed.
   */
  async shutdown (failure: EntryFailure): Promise<void> {
    this.#shutDown = failure
    await Promise.all([...this.#uploads.values()].map(async (upload) => {
      this.remove(upload, 'shut down')
      if (upload.complete && upload.concat === 'partial') await upload.discard()
      else await upload.entry.cancel(failure)
    }))
  }
}
