// What the two HTTP transports share: one request body read under a silence limit,
// stopped at the first failure (client abort, timeout, a failing entry, shutdown),
// and an entry fed from a byte stream with backpressure.
import type { Readable } from 'node:stream'
import type { Entry } from '../entry.js'
import { ChunkTimeoutError, MalformedError, PrematureCloseError, withUploadCode, type EntryFailure } from '../errors.js'
import type { Uploads } from '../uploads.js'
import { SilenceTimer } from './silence.js'

export class HttpBody {
  readonly silence: SilenceTimer
  readonly #uploads: Uploads
  readonly #payload: Readable
  readonly #failed: Promise<never>
  #reject!: (error: EntryFailure) => void

  constructor (uploads: Uploads, payload: Readable) {
    this.#uploads = uploads
    this.#payload = payload
    this.#failed = new Promise<never>((_resolve, reject) => { this.#reject = reject })
    let chunkTimeout = 0
    for (const config of uploads.configs.values()) chunkTimeout = Math.max(chunkTimeout, config.chunkTimeout)
    this.silence = new SilenceTimer(chunkTimeout, (ms) => {
      this.fail(withUploadCode(new ChunkTimeoutError(ms), 'chunk_timeout') as EntryFailure)
    })
    uploads.onAbort = (error) => this.#reject(error)
    payload.on('close', this.#onClose)
    payload.on('error', this.#onClose)
  }

  /** Runs the transport's reading until it ends or the body fails, whichever is first. */
  async read<T> (work: Promise<T>): Promise<T> {
    // If the body fails first, `work` still settles later: that is expected, not unhandled.
    work.catch(() => {})
    try {
      return await Promise.race([work, this.#failed])
    } catch (error) {
      this.fail(error)
      // The first failure wins: it is what cancelled the entries.
      throw this.#uploads.aborted
    } finally {
      this.silence.stop()
      this.#payload.off('close', this.#onClose)
      this.#payload.off('error', this.#onClose)
      this.#uploads.onAbort = undefined
    }
  }

  /** Stops the body: every unfinished entry is cancelled, the rest of the body is not read. */
  fail (error: unknown): void {
    this.#uploads.bodyUnread = true
    this.silence.stop()
    this.#uploads.abort(asFailure(error)).catch(/* c8 ignore next */ () => {})
  }

  readonly #onClose = (): void => {
    if (!this.#payload.readableEnded) this.fail(prematureClose())
  }
}

/** start → writeChunk for every piece of `source` → close('done'), the silence timer suspended around each call. */
export async function feedEntry (entry: Entry, source: Readable, body: HttpBody): Promise<void> {
  await body.silence.whileBusy(entry.start())
  // Leaving the loop early (the entry failed) must not destroy the source: a part
  // stream is drained so parsing goes on, a request still gets its response.
  for await (const chunk of source.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    body.silence.heard()
    await body.silence.whileBusy(entry.write(chunk))
  }
  await body.silence.whileBusy(entry.finish())
}

export function prematureClose (): EntryFailure {
  return withUploadCode(new PrematureCloseError(), 'cancelled') as EntryFailure
}

/**
 * Our errors pass through (an entry cancelled by them records `cancelled` unless they
 * say better); anything else a parser or stream threw is a malformed body.
 */
export function asFailure (error: unknown): EntryFailure {
  const failure = error instanceof Error && typeof (error as EntryFailure).statusCode === 'number'
    ? error as EntryFailure
    : new MalformedError((error as Error).message) as EntryFailure
  failure.uploadCode ??= 'cancelled'
  return failure
}
