// One feed: the bytes of one entry, from a source (a request body, a channel's frames)
// to a target (the entry's writer), one chunk at a time. Every transport moves bytes
// through it; each maps how the feed ended to its own wire.
//
// Backpressure: the source is paused while a chunk is with the target, and resumed only
// once the write settled, so nothing more is read meanwhile.
//
// chunkTimeout, everywhere: the time the plugin waits for the client's next bytes of an
// entry (or of an HTTP body). The silence timer counts only while the feed waits for its
// source; it is suspended while a chunk is with the writer (writerTimeout bounds that) and
// counts from zero again once the write settled. Whoever owns the timer decides what
// silence means past that (an HTTP body fails; a resumable append or a channel entry ends).
import type { Readable } from 'node:stream'
import type { SilenceTimer } from './silence.js'

/**
 * How a feed ended:
 * - `'end'`: the source ended, and the write of every chunk it handed settled.
 * - `'stopped'`: the stop signal (pre-emption, the request failed, the entry ended elsewhere).
 * - `'aborted'`: the client went away (the source closed before its end).
 * - `'timeout'`: the silence policy gave up (only where its owner ends the feed with it).
 * - `'limit'`: the source brought more than the feed's limit; that chunk was not written.
 * - `'failed'`: a write rejected (the entry failed or was cancelled): see `writeError`.
 * - an `Error`: the source failed (a body that could not be read), as it reported it.
 */
export type FeedEnd = 'end' | 'stopped' | 'aborted' | 'timeout' | 'limit' | 'failed' | Error

/** Where the bytes go: an entry (its writer), or a holder (a checksummed append). */
export interface FeedTarget {
  write: (chunk: Buffer) => Promise<void>
}

/** Where the bytes come from: it hands them to `feed.data`, and its end to `feed.end`. */
export interface FeedSource {
  /** Starts listening; called once, before the first `resume`. */
  open: (feed: Feed) => void
  /** The feed takes a chunk: hand the next one to `feed.data` (now or when it comes), or end. */
  resume: () => void
  /** A chunk is with the target: hand none until `resume`. */
  pause: () => void
  /** The feed is over: stop listening. */
  close: () => void
}

export interface FeedOptions {
  /** Client silence: counts while the feed waits for its source (see above). */
  silence: SilenceTimer
  /** Most bytes the feed may bring; past it the feed ends with `'limit'`. */
  limit?: number
  /** Registers the feed's stop; may return its removal, called when the feed ends. */
  onStop?: (stop: () => void) => (() => void) | undefined | void
  /** After each write that settled while the feed goes on. Runs per chunk: keep it cheap. */
  onWritten?: (chunk: Buffer) => void
}

export class Feed {
  /** What the failed write rejected with, when the feed ended `'failed'`. */
  writeError: unknown
  readonly #target: FeedTarget
  readonly #silence: SilenceTimer
  readonly #limit: number
  readonly #onStop: FeedOptions['onStop']
  readonly #onWritten: FeedOptions['onWritten']
  #source!: FeedSource
  #resolve!: (how: FeedEnd) => void
  #unregister: (() => void) | undefined | void
  #received = 0
  /** The chunk with the target, if one is. */
  #writing: Buffer | undefined
  #ending: FeedEnd | undefined

  constructor (target: FeedTarget, options: FeedOptions) {
    this.#target = target
    this.#silence = options.silence
    this.#limit = options.limit ?? Infinity
    this.#onStop = options.onStop
    this.#onWritten = options.onWritten
  }

  /** Feeds every chunk of `source` to the target. Resolves with how it ended; never rejects. */
  async run (source: FeedSource): Promise<FeedEnd> {
    this.#source = source
    return await new Promise<FeedEnd>((resolve) => {
      this.#resolve = resolve
      this.#unregister = this.#onStop?.(this.stop)
      source.open(this)
      if (this.#ending === undefined) source.resume()
    })
  }

  /** A chunk from the source: to the target, the source paused and the silence suspended meanwhile. */
  readonly data = (chunk: Buffer): void => {
    this.#received += chunk.length
    if (this.#received > this.#limit) return this.end('limit')
    this.#writing = chunk
    this.#source.pause()
    this.#silence.suspend()
    this.#target.write(chunk).then(this.#written, this.#failed)
  }

  /** Ends the feed (the first reason wins); a write in flight settles first, so what was written is known. */
  readonly end = (how: FeedEnd): void => {
    if (this.#ending !== undefined) return
    this.#ending = how
    if (this.#writing === undefined) this.#finish()
  }

  /** The stop signal. */
  readonly stop = (): void => { this.end('stopped') }

  readonly #written = (): void => {
    const chunk = this.#writing!
    this.#writing = undefined
    this.#silence.resume()
    if (this.#ending !== undefined) return this.#finish()
    this.#onWritten?.(chunk)
    this.#source.resume()
  }

  readonly #failed = (error: unknown): void => {
    this.#writing = undefined
    this.#silence.resume()
    this.writeError = error
    this.#ending ??= 'failed'
    this.#finish()
  }

  #finish (): void {
    this.#unregister?.()
    this.#source.close()
    this.#resolve(this.#ending!)
  }
}

/**
 * A stream as a feed's source: 'data' one buffer at a time (no copies), 'end', a close
 * before the end (the client gone), an 'error'. Its end leaves the stream paused, not
 * destroyed: whoever owns it drains it or answers on it.
 */
export class StreamSource implements FeedSource {
  readonly #stream: Readable
  #feed!: Feed

  constructor (stream: Readable) {
    this.#stream = stream
  }

  open (feed: Feed): void {
    this.#feed = feed
    const stream = this.#stream
    // Gone, or failed, before the feed began (HTTP/2's request on a reset stream is destroyed without an error).
    if (stream.destroyed) return feed.end(stream.errored ?? 'aborted')
    stream.on('data', feed.data)
    stream.once('end', this.#onEnd)
    stream.once('close', this.#onClose)
    stream.once('error', feed.end)
  }

  resume (): void { this.#stream.resume() }

  pause (): void { this.#stream.pause() }

  close (): void {
    const stream = this.#stream
    stream.off('data', this.#feed.data)
    stream.off('end', this.#onEnd)
    stream.off('close', this.#onClose)
    stream.off('error', this.#feed.end)
    stream.pause()
  }

  readonly #onEnd = (): void => { this.#feed.end('end') }

  readonly #onClose = (): void => { this.#feed.end(this.#stream.readableEnded ? 'end' : 'aborted') }
}
