// One entry's state machine and its writer runner. The six guarantees live here:
// every writer whose `init` succeeded is closed exactly once, calls never overlap,
// chunks go in order, `'done'` only after every byte went through a settled
// `writeChunk`, `{ error }` exactly when `writeChunk` threw, `'cancel'` otherwise.
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { CloseReason, EntryStatus, UploadEntry, UploadErrorCode, UploadWriter } from '../types/index.js'
import type { ResolvedConfig } from './config.js'
import {
  CancelledError, TooLargeError, WriterFailureError, WriterTimeoutError, withUploadCode, type EntryFailure
} from './errors.js'

/** What the client said about the file before sending it. */
export interface ClientInfo {
  clientName: string
  clientType: string
  clientSize: number | undefined
  clientLastModified?: number | undefined
}

const ENDED: ReadonlySet<EntryStatus> = new Set(['done', 'cancelled', 'failed'])

export class Entry implements UploadEntry {
  readonly ref = randomUUID()
  readonly uploadName: string
  readonly clientName: string
  readonly clientType: string
  readonly clientSize: number | undefined
  readonly clientLastModified: number | undefined
  bytesReceived = 0
  status: EntryStatus = 'pending'
  readonly errors: UploadErrorCode[] = []
  /** The error that ended this entry, if it did not end well. */
  failure: EntryFailure | undefined
  /** Set once a consumer took the entry (or it was discarded): it is no longer listed. */
  released = false
  /** Refused on arrival (validation): it never had a writer and takes no `maxEntries` slot. */
  refused = false

  readonly #config: ResolvedConfig
  readonly #request: FastifyRequest
  readonly #log: FastifyBaseLogger
  #writer: UploadWriter | undefined
  #state: unknown
  /** `close` has been called (or is owed to a hung call): never call it again. */
  #closed = false
  /** The writer call in flight, settled (or timed out); `undefined` when idle. */
  #inflight: Promise<unknown> | undefined
  /** Why the entry must stop, set by `cancel` while a call is in flight. */
  #stopping: EntryFailure | undefined
  #reportedProgress = -1
  #watchdog: NodeJS.Timeout | undefined
  #onWatchdog: (() => void) | undefined
  /** The one `close` call, once made. */
  #closing: Promise<void> | undefined

  constructor (config: ResolvedConfig, info: ClientInfo, request: FastifyRequest, log: FastifyBaseLogger) {
    this.#config = config
    this.#request = request
    this.#log = log
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

  /** Marks an entry that never reached its writer (validation) as failed. */
  refuse (error: EntryFailure): void {
    this.refused = true
    this.status = 'failed'
    this.failure = error
    this.errors.push(error.uploadCode)
  }

  /** Chooses the writer and runs `init`. Rejects with the entry's failure. */
  async start (): Promise<void> {
    let writer: UploadWriter
    let options: unknown
    try {
      const spec = await this.#config.writer(this.uploadName, this, this.#request)
      if (Array.isArray(spec)) [writer, options] = spec as [UploadWriter, unknown]
      else writer = spec as UploadWriter
    } catch (error) {
      throw this.#failBeforeInit(error)
    }
    // cancelled while the factory ran: no writer was initialised, nothing to close
    if (this.ended) throw this.failure
    this.#writer = writer
    const init = this.#call('init', () => writer.init(options))
    try {
      this.#state = await init.result
    } catch (error) {
      if (init.hung !== undefined) {
        // init may still succeed later: such a writer is owed its one close.
        this.#closed = true
        init.hung.then((late) => this.#closeLate(late, 'cancel'), () => {})
      }
      throw this.#failBeforeInit(error)
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
    if (this.status !== 'uploading') throw this.failure ?? this.#cancelledError()
    const limit = this.#limit()
    if (this.bytesReceived + data.length > limit) {
      await this.cancel(withUploadCode(new TooLargeError(this.clientName, this.uploadName, limit), 'too_large') as EntryFailure)
      throw this.failure
    }
    const { chunkSize } = this.#config
    for (let offset = 0; offset < data.length; offset += chunkSize) {
      const piece = offset === 0 && data.length <= chunkSize ? data : data.subarray(offset, offset + chunkSize)
      await this.#writeChunk(piece)
    }
    if (data.length === 0) return
    await this.#reportProgress()
  }

  /** The last byte arrived: `close(state, 'done')`. Rejects if the writer fails it. */
  async finish (): Promise<void> {
    if (this.status !== 'uploading') throw this.failure ?? this.#cancelledError()
    try {
      await this.#close('done')
    } catch (error) {
      throw this.#endAs('failed', this.#writerFailure(error))
    }
    this.status = 'done'
    await this.#reportProgress()
  }

  /**
   * Ends an unfinished entry with `'cancel'`, after any in-flight call settled.
   * Idempotent; a finished entry is left alone (see `discard`).
   */
  async cancel (reason?: EntryFailure): Promise<void> {
    if (this.ended) return
    this.#stopping ??= reason ?? this.#cancelledError()
    if (this.#inflight !== undefined) {
      // The call's owner (start/write/finish) sees #stopping when it settles and ends the entry.
      await this.#inflight
      await this.#closing
      return
    }
    if (this.status === 'pending') {
      // No writer initialised yet (the factory may be running): nothing to close.
      this.#endAs('cancelled', this.#stopping)
      return
    }
    await this.#honourCancel().catch(() => {})
  }

  /** If a cancel is pending: close the writer with 'cancel' and end the entry. */
  async #honourCancel (): Promise<void> {
    if (this.#stopping === undefined || this.ended) return
    if (!this.#closed) await this.#close('cancel')
    await this.#closing
    const failure = this.#endAs('cancelled', this.#stopping)
    await this.#reportProgress()
    throw failure
  }

  /** The writer's `meta` for a consumer. */
  meta (): unknown {
    return this.#writer!.meta(this.#state)
  }

  /** Lets go of a finished entry: the writer's `discard`, once. Never throws. */
  async discard (): Promise<void> {
    if (this.released) return
    this.released = true
    if (this.status !== 'done' || this.#writer?.discard === undefined) return
    try {
      await this.#writer.discard(this.#state)
    } catch (error) {
      this.#log.warn({ err: error, ref: this.ref }, 'upload writer discard failed')
    }
  }

  #limit (): number {
    const { maxFileSize } = this.#config
    return this.clientSize === undefined ? maxFileSize : Math.min(maxFileSize, this.clientSize)
  }

  async #writeChunk (piece: Buffer): Promise<void> {
    const writer = this.#writer!
    const call = this.#call('writeChunk', () => writer.writeChunk(piece, this.#state))
    try {
      this.#state = await call.result
    } catch (error) {
      this.#closed = true
      if (call.hung !== undefined) {
        // The call is still running: close after it, so calls never overlap.
        call.hung.then(() => {}, () => {}).then(() => this.#closeLate(this.#state, { error }))
      } else {
        await this.#close({ error })
      }
      throw this.#endAs('failed', this.#writerFailure(error))
    }
    this.bytesReceived += piece.length
    await this.#honourCancel()
  }

  /** `close` exactly once. Rejects only for `'done'`. */
  #close (reason: CloseReason): Promise<void> {
    this.#closed = true
    const writer = this.#writer!
    const call = this.#call('close', () => writer.close(this.#state, reason))
    this.#closing = call.result.finally(() => clearTimeout(this.#watchdog)).then((state) => { this.#state = state }, (error) => {
      if (reason === 'done') throw error
      this.#log.warn({ err: error, ref: this.ref }, 'upload writer close failed')
    })
    return this.#closing
  }

  /** Closes a writer whose earlier call outlived `writerTimeout`. */
  #closeLate (state: unknown, reason: CloseReason): void {
    this.#state = state
    this.#close(reason).catch(() => {})
  }

  /**
   * Runs one writer call, bounded by `writerTimeout`. `result` settles with the call
   * or with a timeout error; `hung` is the still-running call when it timed out.
   */
  #call<T> (name: string, fn: () => T | Promise<T>): { result: Promise<T>, hung?: Promise<T> } {
    let value: T | Promise<T>
    try {
      value = fn()
    } catch (error) {
      return { result: Promise.reject(error) }
    }
    if (!(value instanceof Promise)) {
      // A synchronous call is already over; still mark it in flight until the caller resumes.
      const result = Promise.resolve(value)
      this.#inflight = result.then(() => { this.#inflight = undefined })
      return { result }
    }
    const call: { result: Promise<T>, hung?: Promise<T> } = { result: value }
    const timeout = this.#config.writerTimeout
    call.result = new Promise<T>((resolve, reject) => {
      this.#onWatchdog = () => {
        call.hung = value
        reject(new WriterTimeoutError(name, timeout))
      }
      this.#armWatchdog(timeout)
      value.then((result) => {
        this.#callSettled()
        resolve(result)
      }, (error: unknown) => {
        this.#callSettled()
        reject(error)
      })
    })
    this.#inflight = call.result.catch(() => {})
    return call
  }

  /** One timer per entry, re-armed for each asynchronous writer call (cheaper than one per call). */
  #armWatchdog (timeout: number): void {
    if (this.#watchdog === undefined) {
      this.#watchdog = setTimeout(() => this.#onWatchdog?.(), timeout)
      // A hung writer alone must not keep the process alive.
      this.#watchdog.unref()
    } else {
      this.#watchdog.refresh()
    }
  }

  #callSettled (): void {
    this.#onWatchdog = undefined
    this.#inflight = undefined
  }

  #failBeforeInit (error: unknown): EntryFailure {
    return this.#endAs('failed', this.#writerFailure(error))
  }

  #writerFailure (cause: unknown): EntryFailure {
    this.#log.error({ err: cause, ref: this.ref, uploadName: this.uploadName }, 'upload writer failed')
    return withUploadCode(new WriterFailureError(this.clientName, { cause }), 'writer_failure') as EntryFailure
  }

  #cancelledError (): EntryFailure {
    return withUploadCode(new CancelledError(this.clientName), 'cancelled') as EntryFailure
  }

  #endAs (status: 'failed' | 'cancelled', error: EntryFailure): EntryFailure {
    if (!this.ended) {
      this.status = status
      this.failure = error
      this.errors.push(error.uploadCode)
    }
    return this.failure!
  }

  async #reportProgress (): Promise<void> {
    const { progress } = this.#config
    if (progress === undefined) return
    const now = this.progress
    if (now === this.#reportedProgress && !this.ended) return
    this.#reportedProgress = now
    try {
      await progress(this.uploadName, this, this.#request)
    } catch (error) {
      this.#log.warn({ err: error, ref: this.ref }, 'upload progress callback failed')
    }
  }
}
