// What the two HTTP transports share: one request body read under a silence limit,
// stopped at the first failure (client abort, timeout, a failing entry, shutdown),
// and an entry fed from a byte stream (a feed, lib/feed.ts) with backpressure.
import { Http2ServerRequest } from 'node:http2'
import type { Readable } from 'node:stream'
import type { Entry } from '../../entry.js'
import { ChunkTimeoutError, asFailure, type EntryFailure } from '../../errors.js'
import { bodyStreamFailure, prematureClose } from '../route-body.js'
import type { Uploads } from '../../uploads.js'
import { Feed, StreamSource } from '../../feed.js'
import { SilenceTimer } from '../../silence.js'

export class HttpBody {
  readonly silence: SilenceTimer
  readonly #uploads: Uploads
  readonly #payload: Readable
  readonly #failed: Promise<never>
  #reject!: (error: EntryFailure) => void
  /** Readers to stop at the first failure (so no late byte reaches a cancelled entry). */
  readonly #readers = new Set<(error: EntryFailure) => void>()

  constructor (uploads: Uploads, payload: Readable) {
    this.#uploads = uploads
    this.#payload = payload
    this.#failed = new Promise<never>((_resolve, reject) => { this.#reject = reject })
    let chunkTimeout = 0
    for (const config of uploads.configs.values()) chunkTimeout = Math.max(chunkTimeout, config.chunkTimeout)
    this.silence = new SilenceTimer(chunkTimeout, (ms) => {
      this.fail(new ChunkTimeoutError(ms))
    })
    uploads.signal.addEventListener('abort', this.#onAbort)
    payload.on('close', this.#onClose)
    payload.on('error', this.#onError)
    // It may have failed already, while the writer started (holdErrors kept its error).
    if (payload.errored !== null) {
      this.#failed.catch(() => {})
      this.#onError(payload.errored)
    }
  }

  /** Runs the transport's reading until it ends or the body fails, whichever is first. */
  async read<T> (work: Promise<T>): Promise<T> {
    // If the body fails first, `work` still settles later: that is expected, not unhandled.
    work.catch(() => {})
    try {
      const result = await Promise.race([work, this.#failed])
      this.#detach()
      return result
    } catch (error) {
      this.fail(error)
      this.#detach()
      // Whatever was fed from the body (a multipart parser) gets no more of it.
      this.#payload.unpipe()
      // The first failure wins: it is what cancelled the entries.
      const failure = this.#uploads.aborted!
      if (failure.uploadCode !== 'chunk_timeout') await drainRest(this.#uploads, this.#payload)
      throw failure
    }
  }

  #detach (): void {
    this.silence.stop()
    this.#payload.off('close', this.#onClose)
    this.#payload.off('error', this.#onError)
    this.#uploads.signal.removeEventListener('abort', this.#onAbort)
  }

  /** The uploads were stopped (a failing entry, shutdown): the reading stops with their reason. */
  readonly #onAbort = (): void => { this.#reject(this.#uploads.aborted!) }

  /** Stops the body: every unfinished entry is cancelled at once. */
  fail (error: unknown): void {
    this.silence.stop()
    this.#uploads.abort(asFailure(error)).catch(/* c8 ignore next */ () => {})
    const failure = this.#uploads.aborted!
    for (const stop of this.#readers) stop(failure)
  }

  /** Registers a reader to stop when the body fails; returns its removal. */
  onFail (stop: (error: EntryFailure) => void): () => void {
    this.#readers.add(stop)
    return () => this.#readers.delete(stop)
  }

  readonly #onClose = (): void => {
    if (!this.#payload.readableEnded) this.fail(prematureClose())
  }

  readonly #onError = (error: Error): void => { this.fail(bodyStreamFailure(error)) }
}

/** Upload sets of requests whose body was not read to its end: their connection cannot be reused. */
const unreadBodies = new WeakSet<Uploads>()

/** The request's body was left unread (refused before its end): its connection closes after the answer. */
export function leaveBodyUnread (uploads: Uploads): void {
  unreadBodies.add(uploads)
}

export function isBodyUnread (uploads: Uploads): boolean {
  return unreadBodies.has(uploads)
}

/** How much of a failed body is read and thrown away so the client can read the answer. */
export const DRAIN_LIMIT = { bytes: 4 * 1024 * 1024, ms: 2000 }

/**
 * A client still sending when the server answers early may lose the answer to a TCP
 * reset if the server closes with unread bytes. So, like nginx's lingering close,
 * read and discard what is left, within limits, before answering; past them the
 * connection closes after the answer (closeAfterAnswer).
 * HTTP/2 has no such hazard: the answer goes at once, and the stream's reset after it
 * stops the client without touching the connection. Nothing is drained there.
 */
export async function drainRest (uploads: Uploads, payload: Readable): Promise<void> {
  unreadBodies.add(uploads)
  if (payload.readableEnded || payload.destroyed || payload instanceof Http2ServerRequest) {
    if (payload.readableEnded) unreadBodies.delete(uploads)
    return
  }
  await new Promise<void>((resolve) => {
    let left = DRAIN_LIMIT.bytes
    const timer = setTimeout(done, DRAIN_LIMIT.ms)
    function onData (chunk: Buffer): void {
      left -= chunk.length
      if (left < 0) done()
    }
    function onEnd (): void {
      unreadBodies.delete(uploads)
      done()
    }
    function done (): void {
      clearTimeout(timer)
      payload.off('data', onData)
      payload.off('end', onEnd)
      payload.off('close', done)
      payload.pause()
      resolve()
    }
    payload.on('data', onData)
    payload.once('end', onEnd)
    payload.once('close', done)
    payload.resume()
  })
}

/**
 * start → writeChunk for every piece of `source` (one feed) → close('done'). The body's
 * silence timer counts only while the feed waits for bytes: every writer call suspends it.
 */
export async function feedEntry (entry: Entry, source: Readable, body: HttpBody): Promise<void> {
  await body.silence.whileBusy(entry.start())
  // Leaving early (the entry failed) does not destroy the source: a part is drained, a request still answered.
  const feed = new Feed(entry, { silence: body.silence, onStop: (stop) => body.onFail(stop) })
  const how = await feed.run(new StreamSource(source))
  // A write that failed (the entry's failure, or its cancel), a part's stream that failed,
  // or the body that failed and stopped the feed (what failed it is the request's answer).
  if (how !== 'end') throw how === 'failed' ? feed.writeError : how instanceof Error ? how : prematureClose()
  await body.silence.whileBusy(entry.finish())
}
