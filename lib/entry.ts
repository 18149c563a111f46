// One entry's state machine and its writer runner. The six guarantees live here:
// every writer whose `init` succeeded is closed exactly once, calls never overlap,
// chunks go in order, `'done'` only after every byte went through a settled
// `writeChunk`, `{ error }` exactly when `writeChunk` threw, `'cancel'` otherwise.
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { CloseReason, EntryStatus, UploadEntry, UploadErrorCode, UploadWriter, WriterCall, WriterSnapshot, WriterSpec } from '../types/index.js'
import type { ResolvedConfig } from './config.js'
import {
  CancelledError, InvalidConfigError, TooLargeError, WriterFailureError, WriterTimeoutError, type EntryFailure
} from './errors.js'

/** What the client said about the file before sending it. */
export interface ClientInfo {
  clientName: string
  clientType: string
  clientSize: number | undefined
  clientLastModified?: number | undefined
  /** An entry continued from a store keeps the ref it was created with. */
  ref?: string
}

export type EntryHolder = 'uploads' | 'refs' | 'consumer' | 'released'

const ENDED: ReadonlySet<EntryStatus> = new Set(['done', 'cancelled', 'failed'])

export class Entry implements UploadEntry {
  readonly ref: string
  readonly uploadName: string
  readonly clientName: string
  readonly clientType: string
  clientSize: number | undefined
  readonly clientLastModified: number | undefined
  bytesReceived = 0
  status: EntryStatus = 'pending'
  readonly errors: UploadErrorCode[] = []
  /** The error that ended this entry, if it did not end well. */
  failure: EntryFailure | undefined
  /**
   * Who answers for the entry, in one field: the upload set it belongs to (a request's, a
   * socket's, a resumable upload's), the ref store while it waits for its ref, a consumer
   * while one runs, or nobody once it was discarded or consumed. Whoever holds it discards
   * it if nobody takes it; the others leave it alone.
   */
  holder: EntryHolder = 'uploads'
  /** Refused on arrival (validation): it never had a writer and takes no `maxEntries` slot. */
  refused = false
  /** Told once, when the entry is discarded or consumed: what else lists it lets go of it too. */
  onRelease: ((consumed: boolean) => void) | undefined

  readonly #config: ResolvedConfig
  /** The request carrying the entry's bytes now, if any: what `progress` is given. */
  #request: FastifyRequest | undefined
  readonly #log: FastifyBaseLogger
  #writer: UploadWriter | undefined
  #state: unknown
  /** `close` has been called (or is owed to a hung call): never call it again. */
  #closed = false
  /** The one `close` call's outcome, as the entry sees it (bounded by writerTimeout)… */
  #closing: Promise<void> | undefined
  /** …and the writer's own close, however late it settles. */
  #closeSettled: Promise<void> | undefined
  /** Settles when the writer call in flight settled; cleared by the call's owner once it took the result. */
  #busy: Promise<void> | undefined
  /** Why the entry must stop, set by `cancel` while a call is in flight. */
  #stopping: EntryFailure | undefined
  readonly #onReport: ((entry: Entry) => void) | undefined
  #reportedProgress = -1
  #reportedEnd = false
  #watchdog: NodeJS.Timeout | undefined
  /** Aborted when the entry is cancelled: writer calls waiting on something stop at once. */
  readonly #abort = new AbortController()
  /** What every init and writeChunk call gets: one object per entry, not one per chunk. */
  readonly #writerCall: WriterCall = { signal: this.#abort.signal }
  #onWatchdog: (() => void) | undefined
  #lastSnapshot: WriterSnapshot | undefined

  /**
   * `request`: the one that announced the entry (its writer factory runs during it).
   * `onReport` hears every change of progress or status, before the route's `progress` callback.
   */
  constructor (config: ResolvedConfig, info: ClientInfo, request: FastifyRequest | undefined, log: FastifyBaseLogger, onReport?: (entry: Entry) => void) {
    this.#config = config
    this.#onReport = onReport
    this.#request = request
    this.#log = log
    this.ref = info.ref ?? randomUUID()
    this.uploadName = config.uploadName
    this.clientName = info.clientName
    this.clientType = info.clientType
    this.clientSize = info.clientSize
    this.clientLastModified = info.clientLastModified
  }

  get progress (): number {
    if (this.status === 'done') return 100
    if (this.clientSize === undefined || this.clientSize === 0) return 0
    return Math.min(99, Math.floor((this.bytesReceived / this.clientSize) * 100))
  }

  get ended (): boolean { return ENDED.has(this.status) }

  /** Discarded or consumed: listed nowhere any more. */
  get released (): boolean { return this.holder === 'released' }

  /** A resumable upload's deferred length became known. */
  declareSize (size: number): void {
    this.clientSize = size
  }

  /**
   * A resumable upload lives across requests: each one that carries its bytes says so
   * while it does, and `undefined` once it ended, so no ended request is kept.
   */
  carriedBy (request: FastifyRequest | undefined): void {
    this.#request = request
  }

  /** The upload config the entry was validated against. */
  get config (): ResolvedConfig { return this.#config }

  /** Marks an entry that never reached its writer (validation) as failed. */
  refuse (error: EntryFailure): void {
    this.refused = true
    this.#endAs('failed', error)
  }

  /** Chooses the writer and runs `init`. Rejects with the entry's failure. */
  async start (): Promise<void> {
    const [writer, options] = await this.#chooseWriter()
    const init = this.#call('init', () => writer.init(options, this.#writerCall))
    await this.#opened(init)
  }

  /**
   * Continues an entry another process (or an earlier life of this one) checkpointed:
   * chooses the writer as `start` does and runs its `restore`, so the entry goes on from
   * `snapshot.offset` bytes. Rejects with the entry's failure (a writer that cannot
   * restore, or whose restore throws, fails it: nothing is open, nothing to close).
   */
  async resume (snapshot: WriterSnapshot): Promise<void> {
    const [writer, options] = await this.#chooseWriter()
    if (writer.restore === undefined) throw this.#failBeforeInit(new Error('its writer has no restore()'))
    this.bytesReceived = snapshot.offset
    const restore = this.#call('restore', () => writer.restore!(snapshot, options, this.#writerCall))
    await this.#opened(restore)
  }

  /** Whether the writer can go on in another process: it has `checkpoint` and `restore`. */
  get resumable (): boolean {
    return this.#writer?.checkpoint !== undefined && this.#writer.restore !== undefined
  }

  /**
   * The snapshot of the last checkpoint that succeeded, if any: once the entry is
   * finished, what its stored bytes can be found (or cleaned up) by in another process,
   * if it counts all of them (`offset === bytesReceived`).
   */
  get lastSnapshot (): WriterSnapshot | undefined { return this.#lastSnapshot }

  /**
   * Makes what the writer holds durable (its `checkpoint`), between writer calls: the
   * snapshot counts every byte of a settled `writeChunk`. `last`: no call follows in this
   * process (shutdown). A writer that throws, or whose snapshot does not count those
   * bytes, fails the entry (closed with the error): rejects with the entry's failure.
   */
  async checkpoint (last = false): Promise<WriterSnapshot> {
    this.#assertOpen()
    const writer = this.#writer!
    const call = this.#call('checkpoint', () => writer.checkpoint!(this.#state, { last }))
    let snapshot: WriterSnapshot
    try {
      snapshot = await call.result
      if (snapshot.offset !== this.bytesReceived) throw new Error(`its snapshot counts ${String(snapshot.offset)} bytes, not the ${this.bytesReceived} it was given`)
    } catch (error) {
      this.#busy = undefined
      // A checkpoint that outlived writerTimeout may still be running: the close waits for it.
      if (call.timedOut()) {
        const late = (): Promise<void> => this.#invokeClose(this.#state, { error })
        this.#oweClose(call.raw.then(late, late))
      } else {
        await this.#close({ error }).catch(() => {})
      }
      throw this.#endAs('failed', this.#writerFailure(error))
    }
    this.#busy = undefined
    this.#lastSnapshot = snapshot
    // Cancelled while it ran (the upload expired, say): the cancel's close comes now.
    await this.#honourCancel()
    return snapshot
  }

  /** The writer and its options, from the route's factory (user code, bounded by writerTimeout, run during the announcing request). */
  async #chooseWriter (): Promise<[UploadWriter, unknown]> {
    if (this.ended) throw this.failure
    const factory = this.#call('writer factory', () => this.#config.writer(this.uploadName, this, this.#request!))
    let spec: WriterSpec
    try {
      spec = await factory.result
    } catch (error) {
      throw this.#failBeforeInit(error)
    } finally {
      this.#busy = undefined
    }
    // Cancelled while the factory ran: no writer was initialised, nothing to close.
    if (this.#stopping !== undefined) throw this.#endAs('cancelled', this.#stopping)
    const [writer, options] = Array.isArray(spec) ? spec as [UploadWriter, unknown] : [spec as UploadWriter, undefined]
    this.#writer = writer
    return [writer, options]
  }

  /** The writer's `init` or `restore` call: once it resolved, the writer is open and owed its one close. */
  async #opened (open: { result: Promise<unknown>, raw: Promise<unknown>, timedOut: () => boolean }): Promise<void> {
    try {
      this.#state = await open.result
    } catch (error) {
      // It may still succeed later: such a writer is owed its one close.
      if (open.timedOut()) this.#oweClose(open.raw.then((late) => this.#invokeClose(late, 'cancel'), () => {}))
      // Stopped by the cancel's signal: a cancel, not a writer failure (no state, no close).
      else if (this.#stopping !== undefined) throw this.#endAs('cancelled', this.#stopping)
      throw this.#failBeforeInit(error)
    } finally {
      this.#busy = undefined
    }
    this.status = 'uploading'
    await this.#honourCancel()
  }

  /**
   * Hands one piece of wire bytes to the writer, split at `chunkSize`. Resolves once
   * every piece went through a settled `writeChunk`; the transport reads no further
   * bytes of this entry before then (backpressure).
   */
  async write (data: Buffer): Promise<void> {
    this.#assertOpen()
    const limit = this.#limit()
    if (this.bytesReceived + data.length > limit) {
      await this.cancel(new TooLargeError(this.clientName, this.uploadName, limit))
      throw this.failure
    }
    const { chunkSize } = this.#config
    for (let offset = 0; offset < data.length; offset += chunkSize) {
      const piece = offset === 0 && data.length <= chunkSize ? data : data.subarray(offset, offset + chunkSize)
      await this.#writeChunk(piece)
    }
    if (data.length > 0) this.#report()
  }

  /** The last byte arrived: `close(state, 'done')`. Rejects if the writer fails it. */
  async finish (): Promise<void> {
    this.#assertOpen()
    try {
      await this.#close('done')
    } catch (error) {
      const failure = this.#endAs('failed', this.#writerFailure(error))
      // 'done' was the writer's last word, but the entry failed: once that close is
      // over (even late), let the writer remove what it left behind.
      this.#closeSettled!.then(() => this.#writer!.discard?.(this.#state, { consumed: false })).catch((err: unknown) => {
        this.#log.warn({ err, ref: this.ref }, 'upload writer discard failed')
      })
      throw failure
    }
    this.#report()
  }

  /**
   * Ends an unfinished entry with `'cancel'`, after any in-flight call settled.
   * Idempotent; a finished entry is left alone (see `discard`).
   */
  async cancel (reason?: EntryFailure): Promise<void> {
    if (this.ended) return
    this.#stopping ??= reason ?? this.#cancelledError()
    this.#abort.abort(this.#stopping)
    if (this.#busy !== undefined) {
      // The call's owner (start/write/finish) sees #stopping when it resumes and ends the entry.
      await this.#busy
      await this.#closing?.catch(() => {})
      return
    }
    if (this.status === 'pending') {
      // start() has not run: nothing to close.
      this.#endAs('cancelled', this.#stopping)
      return
    }
    await this.#honourCancel().catch(() => {})
  }

  /** If a cancel is pending: close the writer with 'cancel' and end the entry (throws its failure). */
  async #honourCancel (): Promise<void> {
    if (this.#stopping === undefined || this.ended) return
    await this.#close('cancel').catch(() => {})
    throw this.#endAs('cancelled', this.#stopping)
  }

  /** The writer's `meta` for a consumer. */
  meta (): unknown {
    return this.#writer!.meta(this.#state)
  }

  /**
   * The stored bytes of a finished entry (before its discard), read back through its
   * writer's `read`: how a concatenation takes its partials' bytes.
   */
  read (): AsyncIterable<Buffer> {
    const writer = this.#writer!
    if (writer.read === undefined) throw new InvalidConfigError(`The writer of "${this.clientName}" cannot read back what it stored: it has no read(state)`)
    return writer.read(this.#state, this.#writerCall)
  }

  /**
   * Lets go of a finished entry: the writer's `discard`, once, told whether a consumer
   * took the entry (`consumed`) or it was dropped unclaimed. Never throws.
   */
  async discard (consumed = false): Promise<void> {
    if (this.released) return
    this.holder = 'released'
    this.onRelease?.(consumed)
    if (this.status !== 'done' || this.#writer?.discard === undefined) return
    try {
      await this.#writer.discard(this.#state, { consumed })
    } catch (error) {
      this.#log.warn({ err: error, ref: this.ref }, 'upload writer discard failed')
    }
  }

  /** No call may follow the end, a requested cancel, or a close. */
  #assertOpen (): void {
    if (this.status !== 'uploading' || this.#stopping !== undefined || this.#closed) {
      throw this.failure ?? this.#stopping ?? this.#cancelledError()
    }
  }

  #limit (): number {
    const { maxFileSize } = this.#config
    return this.clientSize === undefined ? maxFileSize : Math.min(maxFileSize, this.clientSize)
  }

  async #writeChunk (piece: Buffer): Promise<void> {
    const writer = this.#writer!
    const call = this.#call('writeChunk', () => writer.writeChunk(piece, this.#state, this.#writerCall))
    try {
      this.#state = await call.result
    } catch (error) {
      this.#busy = undefined
      if (this.#stopping !== undefined && !call.timedOut()) {
        // Ended by the cancel's signal (or failing while cancelled): the entry is cancelled.
        await this.#close('cancel').catch(() => {})
        throw this.#endAs('cancelled', this.#stopping)
      }
      if (call.timedOut()) {
        // The call is still running: close after it, so calls never overlap.
        const late = (state: unknown): Promise<void> => this.#invokeClose(state, { error })
        this.#oweClose(call.raw.then(late, () => late(this.#state)))
      } else {
        await this.#close({ error })
      }
      throw this.#endAs('failed', this.#writerFailure(error))
    }
    this.#busy = undefined
    this.bytesReceived += piece.length
    await this.#honourCancel()
  }

  /**
   * A writer call outlived writerTimeout and may still settle: its one `close` is owed
   * for then (`owed`). Whoever waits for the entry's close (a cancel, shutdown) waits at
   * most one more writerTimeout: a call that never settles must not hold `app.close()`
   * forever. The close still follows if the call settles later.
   */
  #oweClose (owed: Promise<void>): void {
    this.#closed = true
    let timer: NodeJS.Timeout | undefined
    const gaveUp = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.#log.warn({ ref: this.ref, uploadName: this.uploadName }, 'upload writer call still hung past writerTimeout: its close follows if it ever settles')
        resolve()
      }, this.#config.writerTimeout)
    })
    this.#closing = Promise.race([owed, gaveUp]).finally(() => clearTimeout(timer))
  }

  /** `close` exactly once: a second request gets the first one's outcome. Rejects only for `'done'`. */
  #close (reason: CloseReason): Promise<void> {
    // Every caller checks the state first; this keeps "exactly one close" true regardless.
    /* c8 ignore next */
    if (this.#closed) return this.#closing!
    return this.#invokeClose(this.#state, reason)
  }

  #invokeClose (state: unknown, reason: CloseReason): Promise<void> {
    this.#closed = true
    this.#state = state
    const writer = this.#writer!
    const call = this.#call('close', () => writer.close(state, reason))
    this.#closeSettled = call.raw.then((closed) => { this.#state = closed }, () => {})
    this.#closing = call.result.then((closed) => {
      this.#state = closed
      // Done the moment the writer said so: a cancel arriving after this finds it ended.
      if (reason === 'done') this.status = 'done'
    }, (error: unknown) => {
      if (reason === 'done') throw error
      this.#log.warn({ err: error, ref: this.ref }, 'upload writer close failed')
    }).finally(() => {
      this.#busy = undefined
      clearTimeout(this.#watchdog)
    })
    return this.#closing
  }

  /**
   * Starts one writer call, bounded by `writerTimeout`. `result` settles with the call
   * or with a timeout error; `raw` is the call itself. The entry counts as busy until
   * the caller, having taken the result, clears `#busy`.
   */
  #call<T> (name: string, fn: () => T | Promise<T>): { result: Promise<T>, raw: Promise<T>, timedOut: () => boolean } {
    let raw: Promise<T>
    try {
      raw = Promise.resolve(fn())
    } catch (error) {
      raw = Promise.reject(error)
    }
    let timedOut = false
    const timeout = this.#config.writerTimeout
    const result = new Promise<T>((resolve, reject) => {
      this.#onWatchdog = () => {
        timedOut = true
        reject(new WriterTimeoutError(name, timeout))
      }
      this.#armWatchdog(timeout)
      raw.then((value) => {
        this.#onWatchdog = undefined
        resolve(value)
      }, (error: unknown) => {
        this.#onWatchdog = undefined
        reject(error)
      })
    })
    this.#busy = result.then(() => {}, () => {})
    return { result, raw, timedOut: () => timedOut }
  }

  /** One timer per entry, re-armed for each writer call (cheaper than one per call). */
  #armWatchdog (timeout: number): void {
    if (this.#watchdog === undefined) {
      this.#watchdog = setTimeout(() => this.#onWatchdog?.(), timeout)
      // A hung writer alone must not keep the process alive.
      this.#watchdog.unref()
    } else {
      this.#watchdog.refresh()
    }
  }

  #failBeforeInit (error: unknown): EntryFailure {
    return this.#endAs('failed', this.#writerFailure(error))
  }

  #writerFailure (cause: unknown): EntryFailure {
    this.#log.error({ err: cause, ref: this.ref, uploadName: this.uploadName }, 'upload writer failed')
    return new WriterFailureError(this.clientName, { cause })
  }

  #cancelledError (): EntryFailure {
    return new CancelledError(this.clientName)
  }

  #endAs (status: 'failed' | 'cancelled', error: EntryFailure): EntryFailure {
    if (this.#onWatchdog === undefined) clearTimeout(this.#watchdog)
    if (!this.ended) {
      this.status = status
      this.failure = error
      this.errors.push(error.uploadCode)
      this.#report()
    }
    return this.failure!
  }

  /**
   * Tells the transport and the route's `progress` callback of a new progress or of
   * the end (once), without waiting for the callback: user code never stalls an upload.
   */
  #report (): void {
    const now = this.progress
    if (this.ended ? this.#reportedEnd : now === this.#reportedProgress) return
    this.#reportedProgress = now
    this.#reportedEnd = this.ended
    this.#onReport?.(this)
    // The request of this change, not of the callback's turn: another may carry the bytes by then.
    const request = this.#request
    // Its last report: a finished entry may wait long for its ref, and keeps no request meanwhile.
    if (this.ended) this.#request = undefined
    const { progress } = this.#config
    if (progress === undefined) return
    Promise.resolve().then(() => progress(this.uploadName, this, request)).catch((error: unknown) => {
      this.#log.warn({ err: error, ref: this.ref }, 'upload progress callback failed')
    })
  }
}
