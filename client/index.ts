// The client of fastify-chunked-upload: sends files to an upload route over its
// WebSocket channel (PROTOCOL.md) or as one multipart/form-data POST, with progress
// and cancellation. Browsers and Node 20+. It imports nothing, so a browser can load
// the built file as is (`<script type="module">`).

/** The subprotocol this client speaks: version 2 of the channel protocol (entries outlive their socket). */
export const SUBPROTOCOL = 'fastify-chunked-upload.v2'

/** WebSocket: waits before each reconnection attempt after the socket dropped, in ms (`UploadOptions.retryDelays`). */
export const RETRY_DELAYS: readonly number[] = [0, 1000, 3000, 5000, 10_000]

/** What `slice()` of a file returns: anything that reads as an ArrayBuffer (a Blob). */
export interface BlobLike {
  arrayBuffer (): Promise<ArrayBuffer>
}

/** A browser `File`, Node's `File` (`node:buffer`), or any object of this shape. */
export interface FileLike {
  readonly name: string
  readonly size: number
  /** The media type; `''` when unknown. */
  readonly type: string
  /** Milliseconds since the epoch. */
  readonly lastModified?: number
  slice (start: number, end: number): BlobLike
}

/** A file with its own cancel signal: aborting it cancels this file only. */
export interface FileItem {
  file: FileLike
  signal?: AbortSignal | undefined
}

export type UploadStatus = 'uploading' | 'done' | 'failed' | 'cancelled'

export interface Progress {
  /**
   * 0–100. Over the WebSocket: the server's figure from the bytes its writer accepted
   * (at most 99 until the file is done). Over HTTP: from the bytes sent.
   */
  progress: number
  /** Bytes the server's writer accepted (WebSocket) or bytes sent (HTTP). */
  bytes: number
  status: UploadStatus
}

/**
 * The outcome for one file, in the order the files were given. Over the WebSocket,
 * `ref` names the finished entry on the server; over HTTP there is no ref, and `ok`
 * says the request succeeded (what the handler made of each file is in `response`).
 */
export type FileResult =
  | { name: string, ok: true, ref?: string }
  | { name: string, ok: false, code: string, message: string }

export interface UploadResult {
  /** One per file, in the order given. */
  files: FileResult[]
  /** The route handler's answer (parsed JSON, or text): over HTTP, or with `submit: true`. */
  response?: unknown
  /** The HTTP status of `response`. */
  status?: number
}

/**
 * A WebSocket as both the browser's and the `ws` package's implement it. The event
 * handlers take `never` so that either implementation's handler types fit.
 */
export interface WebSocketLike {
  binaryType: string
  readonly readyState: number
  send (data: string | Uint8Array): void
  close (code?: number, reason?: string): void
  onopen: ((event: never) => void) | null
  onmessage: ((event: never) => void) | null
  onclose: ((event: never) => void) | null
  onerror: ((event: never) => void) | null
}

export type WebSocketConstructor = new (url: string, protocols: string[], options?: { headers: Record<string, string> }) => WebSocketLike

export interface UploadOptions {
  /** The route's upload name (a key of its `allowUpload`) the files are for. */
  uploadName: string
  /** Default `'websocket'`. */
  transport?: 'websocket' | 'http'
  /** Called when a file's progress or status changes. A throw fails the whole upload. */
  onProgress?: (file: FileLike, progress: Progress) => void
  /** Cancels everything: `upload()` rejects with the signal's reason. */
  signal?: AbortSignal | undefined
  /** WebSocket: files uploading at once over the socket. Default 3. */
  concurrency?: number
  /**
   * WebSocket: after the files are done, POST their refs to the route as JSON
   * (`{ ...fields, [uploadName]: refs }`) and return the handler's answer as `response`.
   */
  submit?: boolean
  /** Text fields sent with the files (HTTP) or with the refs (`submit`). */
  fields?: Record<string, string>
  /**
   * Headers for the HTTP requests (upload, submit) and, where the WebSocket
   * implementation takes them (`ws` does, browsers do not), for the upgrade request.
   */
  headers?: Record<string, string>
  /** The WebSocket constructor, where there is no global one (Node 20: `ws`). */
  WebSocket?: WebSocketConstructor
  /** Appended to the route's path to reach its channel. Default `'/ws'`. */
  channelSuffix?: string
  /**
   * WebSocket: when the socket drops (network change, proxy timeout, server restart), the
   * client opens a new one after each of these delays in turn (ms) and resumes every
   * unfinished file from the offset the server holds; `[]` gives up at once. Default
   * `RETRY_DELAYS` (0, 1, 3, 5, 10 s). A file the server no longer has starts again.
   */
  retryDelays?: readonly number[]
}

/** The socket opened, was refused, or dropped: codes of files that never finished. */
const CONNECTION_FAILED = 'connection_failed'
const CONNECTION_CLOSED = 'connection_closed'
/** How long a socket opened only to cancel entries (an abort while reconnecting) waits for their answers. */
const CANCEL_PATIENCE_MS = 10_000
/** The server sent something that is not a message of PROTOCOL.md. */
const PROTOCOL_ERROR = 'protocol_error'
/** Bytes per piece of a file read for an HTTP body. */
const HTTP_PIECE = 65_536

/**
 * Uploads `files` to the route at `url` (`http://host/upload/files`; over the
 * WebSocket, its channel `ws://host/upload/files/ws` is derived from it, or may be
 * given as is). Resolves with one result per file; rejects only when `signal` aborts,
 * when `onProgress` throws, or for bad arguments.
 */
export async function upload (url: string | URL, files: Iterable<FileLike | FileItem> | ArrayLike<FileLike | FileItem>, options: UploadOptions): Promise<UploadResult> {
  if (typeof options.uploadName !== 'string' || options.uploadName === '') throw new TypeError('upload(): options.uploadName is required')
  const concurrency = options.concurrency ?? 3
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new TypeError('upload(): options.concurrency must be a positive integer')
  const transport = options.transport ?? 'websocket'
  if (transport !== 'websocket' && transport !== 'http') throw new TypeError('upload(): options.transport must be "websocket" or "http"')
  const jobs = Array.from(files, (item, index): Job => {
    const { file, signal } = 'slice' in item ? { file: item, signal: undefined } : item
    if (typeof file?.slice !== 'function' || typeof file.name !== 'string' || !Number.isSafeInteger(file.size) || file.size < 0) {
      throw new TypeError(`upload(): item ${index} is not a file (a name, a size and slice())`)
    }
    return newJob(file, signal)
  })
  const urls = channelUrls(url, options.channelSuffix ?? '/ws')
  options.signal?.throwIfAborted()

  if (transport === 'http') return await uploadOverHttp(urls.http, jobs, options)
  const results = await uploadOverWebSocket(urls.ws, jobs, options, concurrency)
  if (options.submit !== true) return { files: results }
  const refs = results.flatMap((result) => result.ok && result.ref !== undefined ? [result.ref] : [])
  const body = JSON.stringify({ ...options.fields, [options.uploadName]: refs })
  const response = await fetch(urls.http, {
    method: 'POST',
    headers: { ...options.headers, 'content-type': 'application/json' },
    body,
    signal: options.signal ?? null
  })
  return { files: results, ...await readResponse(response.status, await response.text()) }
}

/** The route's HTTP URL and its channel's WebSocket URL, from either. */
export function channelUrls (url: string | URL, suffix = '/ws'): { http: string, ws: string } {
  const parsed = new URL(String(url), (globalThis as { location?: { href: string } }).location?.href)
  if (parsed.protocol === 'ws:' || parsed.protocol === 'wss:') {
    const ws = parsed.href
    parsed.protocol = parsed.protocol === 'ws:' ? 'http:' : 'https:'
    if (parsed.pathname.endsWith(suffix)) parsed.pathname = parsed.pathname.slice(0, -suffix.length)
    return { http: parsed.href, ws }
  }
  const http = parsed.href
  parsed.protocol = parsed.protocol === 'https:' ? 'wss:' : 'ws:'
  parsed.pathname += suffix
  return { http, ws: parsed.href }
}

/** One file's state. */
interface Job {
  file: FileLike
  signal: AbortSignal | undefined
  /** The entry id on the socket; 0 until announced. */
  id: number
  ref: string | undefined
  chunkSize: number
  /** Bytes read and framed (or being read). */
  sent: number
  /** End offsets of the chunk frames sent (or being read) and not acknowledged yet, in order. */
  pending: number[]
  /** The frame buffer, reused for every chunk: the WebSocket copies what it sends. */
  frame: Uint8Array | undefined
  reading: boolean
  /** A resume was sent; no frame until its answer. */
  resuming: boolean
  /** Counts the job's restarts (a drop, a resume): a read begun before one is not sent after it. */
  generation: number
  /** Resumes the server asked to try again (`try_again`), in a row. */
  retries: number
  progress: number
  bytes: number
  result: FileResult | undefined
}

function newJob (file: FileLike, signal: AbortSignal | undefined): Job {
  return { file, signal, id: 0, ref: undefined, chunkSize: 0, sent: 0, pending: [], frame: undefined, reading: false, resuming: false, generation: 0, retries: 0, progress: 0, bytes: 0, result: undefined }
}

function statusOf (result: FileResult): UploadStatus {
  return result.ok ? 'done' : result.code === 'cancelled' ? 'cancelled' : 'failed'
}

function cancelled (job: Job): FileResult {
  return { name: job.file.name, ok: false, code: 'cancelled', message: 'cancelled by the client' }
}

/**
 * A chunk frame: uint32 id, uint64 offset (big-endian), then the bytes. Written into the
 * job's frame buffer when it has the size (every chunk but a file's last).
 */
function chunkFrame (job: Job, offset: number, data: ArrayBuffer): Uint8Array {
  const { id } = job
  if (job.frame?.byteLength !== 12 + data.byteLength) job.frame = new Uint8Array(12 + data.byteLength)
  const { frame } = job
  const view = new DataView(frame.buffer)
  view.setUint32(0, id)
  view.setUint32(4, Math.floor(offset / 0x1_0000_0000))
  view.setUint32(8, offset >>> 0)
  frame.set(new Uint8Array(data), 12)
  return frame
}

interface ServerMessage {
  type?: string
  id?: number
  ref?: string | undefined
  chunkSize?: number
  window?: number
  offset?: number
  progress?: number
  code?: string
  message?: string
}

/** Watches abort signals; `clear()` removes every listener. */
function listeners (): { on: (signal: AbortSignal | undefined, fn: () => void) => void, clear: () => void } {
  const added: Array<() => void> = []
  return {
    on (signal, fn) {
      if (signal === undefined) return
      signal.addEventListener('abort', fn, { once: true })
      added.push(() => signal.removeEventListener('abort', fn))
    },
    clear () {
      for (const remove of added.splice(0)) remove()
    }
  }
}

function uploadOverWebSocket (url: string, jobs: Job[], options: UploadOptions, concurrency: number): Promise<FileResult[]> {
  const WebSocketClass = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  if (WebSocketClass === undefined) throw new TypeError('upload(): there is no global WebSocket here: pass options.WebSocket (for example from the ws package)')
  const { headers } = options
  const session = new ChannelSession(jobs.map(({ file, signal }) => ({ file, signal })), {
    uploadName: options.uploadName,
    concurrency,
    onProgress: options.onProgress,
    signal: options.signal,
    openSocket: () => new WebSocketClass(url, [SUBPROTOCOL], headers === undefined ? undefined : { headers }),
    url,
    retryDelays: options.retryDelays ?? RETRY_DELAYS
  })
  return session.run()
}

/** What a `ChannelSession` needs besides its files. */
export interface ChannelSessionOptions {
  uploadName: string
  /** Files announced (in flight) at once. */
  concurrency: number
  onProgress?: UploadOptions['onProgress']
  /** Cancels everything: `run()` rejects with its reason. */
  signal?: AbortSignal | undefined
  /**
   * Opens the channel's socket (subprotocol `SUBPROTOCOL`): by `run()`, unless every file
   * is already cancelled, and again for each reconnection.
   */
  openSocket: () => WebSocketLike
  /** The channel's URL, for the message of `connection_failed`. */
  url: string
  /** Waits before each reconnection after an open socket dropped (see `UploadOptions.retryDelays`). Default none. */
  retryDelays?: readonly number[]
}

/** Closes after which a new socket may succeed: the server going away or restarting, the network lost. Others are final (a refused subprotocol, a policy breach). */
const RETRYABLE_CLOSES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014])

/**
 * One upload over one channel socket (PROTOCOL.md): announces up to `concurrency` files,
 * sends their chunk frames round-robin while fewer than `window` frames are unacknowledged,
 * counts acks, cancels files whose signal aborts, and settles with one result per file.
 * `upload()` makes one per call; it is exported so that its logic can be tested against
 * a scripted socket. A session runs once.
 */
export class ChannelSession {
  readonly #jobs: Job[]
  readonly #options: ChannelSessionOptions
  readonly #aborts = listeners()
  /** Announced, unfinished files by id, in round-robin order for sending. */
  readonly #live = new Map<number, Job>()
  /** How many of the files have been taken for announcing (or skipped, already settled). */
  #queued = 0
  #nextId = 1
  /** Frames the server lets be unacknowledged at once (from `accepted`). */
  #window = 1
  /** Frames sent (or being read) and not acknowledged yet, over every file. */
  #inflight = 0
  #opened = false
  #finished = false
  #socket: WebSocketLike | undefined
  /** Reconnection attempts since the server last showed progress; the timer of the next one. */
  #attempts = 0
  #retryTimer: ReturnType<typeof setTimeout> | undefined
  /** Resumes waiting to be sent again (`try_again`). */
  readonly #resumeTimers = new Set<ReturnType<typeof setTimeout>>()
  /** How `run()`'s promise settles; set when it starts. */
  #settle: { resolve: (results: FileResult[]) => void, reject: (reason: unknown) => void } | undefined

  /** `files` as `upload()` takes them (it checks their shape; this does not). */
  constructor (files: ReadonlyArray<FileLike | FileItem>, options: ChannelSessionOptions) {
    this.#jobs = files.map((item) => 'slice' in item ? newJob(item, undefined) : newJob(item.file, item.signal))
    this.#options = options
  }

  /** Runs the session: resolves with one result per file, in order; rejects when `signal` aborts or `onProgress` throws. */
  run (): Promise<FileResult[]> {
    return new Promise((resolve, reject) => {
      this.#settle = { resolve, reject }
      this.#start()
    })
  }

  #start (): void {
    for (const job of this.#jobs) {
      if (job.signal?.aborted === true) job.result = cancelled(job)
      this.#aborts.on(job.signal, () => this.#cancel(job))
    }
    const { signal } = this.#options
    // Aborted already: nothing is sent at all.
    if (signal?.aborted === true) {
      this.#aborts.clear()
      return this.#settle!.reject(signal.reason)
    }
    this.#aborts.on(signal, () => this.#abortAll(signal!.reason))
    if (this.#settled()) {
      this.#aborts.clear()
      return this.#settle!.resolve(this.#results())
    }
    this.#connect()
  }

  #connect (): void {
    this.#retryTimer = undefined
    const socket = this.#socket = this.#options.openSocket()
    socket.binaryType = 'arraybuffer'
    // Events of a socket this session already left behind are not heard.
    const current = (): boolean => this.#socket === socket
    socket.onopen = () => { if (current()) this.#onOpen() }
    socket.onmessage = (event: { data: unknown }) => { if (current()) this.#onMessage(event.data) }
    socket.onerror = () => {} // 'close' follows
    socket.onclose = (event: { code: number, reason: string }) => { if (current()) this.#onClose(event.code, event.reason) }
  }

  /** Sends on the open socket; while there is none (reconnecting), nothing is sent: the next socket resumes. */
  #send (data: string | Uint8Array): void {
    if (this.#socket!.readyState === 1) this.#socket!.send(data)
  }

  #settled (): boolean {
    return this.#jobs.every((job) => job.result !== undefined)
  }

  #results (): FileResult[] {
    return this.#jobs.map((job) => job.result!)
  }

  #finish (): void {
    this.#finished = true
    this.#aborts.clear()
    clearTimeout(this.#retryTimer)
    for (const timer of this.#resumeTimers) clearTimeout(timer)
    this.#socket!.close(1000)
  }

  #onOpen (): void {
    this.#opened = true
    // A new socket after a drop: files it had accepted are resumed, the others announced again.
    for (const job of this.#live.values()) {
      if (job.ref === undefined) this.#send(this.#announcement(job))
      else this.#resume(job)
    }
    this.#announceMore()
  }

  /** Asks the server where the file's entry stands; no frame of it goes out until the answer. */
  #resume (job: Job): void {
    job.resuming = true
    job.generation++
    this.#inflight -= job.pending.length
    job.pending.length = 0
    job.reading = false
    this.#send(JSON.stringify({ type: 'resume', id: job.id, ref: job.ref }))
  }

  /** A resume the server asked to try again: sent after the next of `retryDelays`, or the file fails once they are spent. */
  #resumeLater (job: Job, message: string): void {
    const delays = this.#options.retryDelays ?? []
    if (job.retries === delays.length) return this.#end(job, { name: job.file.name, ok: false, code: 'try_again', message })
    const generation = job.generation
    const timer = setTimeout(() => {
      this.#resumeTimers.delete(timer)
      // Still waiting, on the same socket: a drop meanwhile resumes it anyway.
      if (job.result === undefined && generation === job.generation) this.#resume(job)
    }, delays[job.retries++])
    this.#resumeTimers.add(timer)
  }

  /** The server showed progress: the reconnection budget is whole again. */
  #progressed (): void {
    this.#attempts = 0
  }

  #onMessage (data: unknown): void {
    if (this.#finished) return
    let message: ServerMessage
    try {
      message = Object(JSON.parse(data as string)) as ServerMessage
    } catch {
      // binary, or not JSON: no file can be trusted to be where this client thinks
      return this.#failAll(PROTOCOL_ERROR, 'the server sent a message that is not JSON')
    }
    this.#receive(message)
  }

  #onClose (code: number, reason: string): void {
    if (this.#finished) return
    const how = `${code}${reason === '' ? '' : `: ${reason}`}`
    const wasOpen = this.#opened
    this.#opened = false // nothing more starts
    const delays = this.#options.retryDelays ?? []
    // After a socket that opened drops, and while reconnecting: another socket, after the next delay.
    const reconnecting = wasOpen || this.#attempts > 0
    if (reconnecting && RETRYABLE_CLOSES.has(code) && this.#attempts < delays.length) {
      this.#dropped()
      this.#retryTimer = setTimeout(() => this.#connect(), delays[this.#attempts++])
      return
    }
    if (reconnecting) this.#failAll(CONNECTION_CLOSED, `the upload channel closed (${how})${this.#attempts > 0 ? ` after ${this.#attempts} attempts to reconnect` : ''}`)
    else this.#failAll(CONNECTION_FAILED, `could not open the upload channel ${this.#options.url} (${how})`)
  }

  /** The socket dropped: frames in flight are forgotten; where each file stands is asked again on the next socket. */
  #dropped (): void {
    this.#inflight = 0
    for (const job of this.#live.values()) {
      job.generation++
      job.pending.length = 0
      job.reading = false
      job.sent = job.bytes
    }
  }

  /** One file's signal aborted: cancel it on the server if it was announced, and settle it. */
  #cancel (job: Job): void {
    if (job.id !== 0 && job.result === undefined) this.#send(JSON.stringify({ type: 'cancel', id: job.id }))
    this.#end(job, cancelled(job))
  }

  /** Cancels everything in flight, discards the finished entries, and rejects. */
  #abortAll (reason: unknown): void {
    if (this.#finished) return
    const started = this.#jobs.filter((job) => job.id !== 0 && (job.result === undefined || job.result.ok))
    if (this.#socket!.readyState === 1) for (const job of started) this.#send(JSON.stringify({ type: 'cancel', id: job.id }))
    else this.#cancelElsewhere(started.filter((job) => job.ref !== undefined))
    this.#finish()
    this.#settle!.reject(reason)
  }

  /**
   * Cancels the entries of `jobs` on a socket of their own, while the session's is down
   * (it dropped, and a new one is not open yet): each is resumed, then cancelled. Best
   * effort, in the background: the socket closes once each has its answer, or after
   * CANCEL_PATIENCE_MS; entries it cannot reach expire on the server (`resumableExpiry`).
   */
  #cancelElsewhere (jobs: Job[]): void {
    if (jobs.length === 0) return
    const socket = this.#options.openSocket()
    const ids = new Set(jobs.map((job) => job.id))
    const timer = setTimeout(() => socket.close(1000), CANCEL_PATIENCE_MS)
    // In Node, this alone does not keep the process alive.
    ;(timer as { unref?: () => void }).unref?.()
    socket.onopen = () => {
      for (const job of jobs) {
        socket.send(JSON.stringify({ type: 'resume', id: job.id, ref: job.ref }))
        socket.send(JSON.stringify({ type: 'cancel', id: job.id }))
      }
    }
    socket.onmessage = (event: { data: unknown }) => {
      let message: ServerMessage
      try {
        message = Object(JSON.parse(event.data as string)) as ServerMessage
      } catch {
        return socket.close(1000)
      }
      // Each entry's last answer: cancelled, or unknown (it had ended).
      if (message.type === 'error' && (message.code === 'cancelled' || message.code === 'unknown_entry')) ids.delete(message.id!)
      if (ids.size === 0) socket.close(1000)
    }
    socket.onerror = () => {}
    socket.onclose = () => clearTimeout(timer)
  }

  #emit (job: Job, status: UploadStatus): void {
    const { onProgress } = this.#options
    if (onProgress === undefined) return
    try {
      onProgress(job.file, { progress: job.progress, bytes: job.bytes, status })
    } catch (error) {
      this.#abortAll(error)
    }
  }

  /** The file's outcome; frees its concurrency slot and its window slots. */
  #end (job: Job, result: FileResult): void {
    if (job.result !== undefined || this.#finished) return
    job.result = result
    this.#live.delete(job.id)
    this.#inflight -= job.pending.length
    job.pending.length = 0
    job.frame = undefined
    if (result.ok) {
      job.progress = 100
      job.bytes = job.file.size
    }
    this.#emit(job, statusOf(result))
    this.#announceMore()
    this.#pump()
    if (!this.#finished && this.#settled()) {
      this.#finish()
      this.#settle!.resolve(this.#results())
    }
  }

  /** Every unfinished file fails with this code. */
  #failAll (code: string, message: string): void {
    for (const job of this.#jobs) this.#end(job, { name: job.file.name, ok: false, code, message })
  }

  /** Announces files while fewer than `concurrency` are in flight. */
  #announceMore (): void {
    const { concurrency } = this.#options
    for (;;) {
      if (!this.#opened || this.#finished || this.#live.size === concurrency || this.#queued === this.#jobs.length) return
      const job = this.#jobs[this.#queued++]!
      if (job.result !== undefined) continue
      job.id = this.#nextId++
      this.#live.set(job.id, job)
      this.#send(this.#announcement(job))
    }
  }

  #announcement (job: Job): string {
    const { name, size, type, lastModified } = job.file
    return JSON.stringify({ type: 'announce', id: job.id, uploadName: this.#options.uploadName, name, size, mimeType: type, lastModified })
  }

  /** The next accepted file with bytes left and no read under way, round-robin. */
  #nextToSend (): Job | undefined {
    for (const job of this.#live.values()) {
      if (job.ref !== undefined && !job.resuming && !job.reading && job.sent < job.file.size) {
        // to the back of the line, so the files take turns
        this.#live.delete(job.id)
        this.#live.set(job.id, job)
        return job
      }
    }
    return undefined
  }

  /** Sends chunk frames, round-robin over the files, while the window has room. */
  #pump (): void {
    for (;;) {
      if (this.#finished || this.#inflight >= this.#window) return
      const job = this.#nextToSend()
      if (job === undefined) return
      const start = job.sent
      const stop = Math.min(start + job.chunkSize, job.file.size)
      job.sent = stop
      job.reading = true
      job.pending.push(stop)
      this.#inflight++
      this.#sendChunk(job, start, stop)
    }
  }

  /** Reads the bytes `start`–`stop` of the file and sends them as one frame (its window slot is taken). */
  #sendChunk (job: Job, start: number, stop: number): void {
    const generation = job.generation
    job.file.slice(start, stop).arrayBuffer().then((data) => {
      if (data.byteLength !== stop - start) throw new Error(`read ${data.byteLength} bytes at ${start} instead of ${stop - start}: the file changed`)
      // Read before a drop or a resume: what follows is sent from where the server stands.
      if (generation !== job.generation) return
      job.reading = false
      if (job.result !== undefined || this.#finished) return
      this.#send(chunkFrame(job, start, data))
      this.#pump()
    }).catch((error: unknown) => {
      if (generation !== job.generation) return
      job.reading = false
      if (job.result !== undefined || this.#finished) return
      this.#send(JSON.stringify({ type: 'cancel', id: job.id }))
      this.#end(job, { name: job.file.name, ok: false, code: 'read_failed', message: `could not read the file: ${(error as Error)?.message}` })
    })
  }

  #receive (message: ServerMessage): void {
    if (message.type === 'error' && message.id === undefined) {
      return this.#failAll(String(message.code), String(message.message))
    }
    const job = this.#live.get(message.id!)
    if (job === undefined) return // a file this client cancelled or gave up on
    switch (message.type) {
      case 'accepted':
        this.#progressed()
        job.ref = message.ref
        job.chunkSize = message.chunkSize!
        this.#window = message.window!
        this.#emit(job, 'uploading')
        return this.#pump()
      case 'ack':
        this.#progressed()
        // One ack may cover several frames: every frame that ends at or before its offset.
        while (job.pending.length > 0 && job.pending[0]! <= message.offset!) {
          job.pending.shift()
          this.#inflight--
        }
        job.progress = message.progress!
        job.bytes = message.offset!
        this.#emit(job, 'uploading')
        return this.#pump()
      case 'resumed':
        this.#progressed()
        // Where the server stands: what it holds durably, which may be less than it acknowledged.
        job.resuming = false
        job.retries = 0
        job.chunkSize = message.chunkSize!
        this.#window = message.window!
        job.sent = job.bytes = message.offset!
        // Only an unfinished file is resumed (a finished one is answered done): its size is not 0.
        job.progress = Math.min(99, Math.floor(job.bytes / job.file.size * 100))
        this.#emit(job, 'uploading')
        return this.#pump()
      case 'done':
        return this.#end(job, { name: job.file.name, ok: true, ref: message.ref! })
      case 'error':
        // The server no longer has the entry (it ended, or could not survive a restart): the file starts again.
        if (job.resuming && message.code === 'unknown_entry') {
          job.resuming = false
          job.ref = undefined
          job.sent = job.bytes = job.progress = 0
          this.#emit(job, 'uploading')
          return this.#send(this.#announcement(job))
        }
        // The entry is there but cannot be resumed now (the server is full, another holds it): again, after the next delay.
        if (job.resuming && message.code === 'try_again') return this.#resumeLater(job, message.message!)
        // Silence on an open socket (the client asleep, say): the server saved the entry and let go; it goes on.
        if (message.code === 'chunk_timeout' && message.ref !== undefined && job.ref === message.ref) return this.#resume(job)
        return this.#end(job, { name: job.file.name, ok: false, code: message.code!, message: message.message! })
    }
  }
}

/** The answer of the route: JSON when it parses, else the text. */
function readResponse (status: number, text: string): { status: number, response: unknown } {
  try {
    return { status, response: JSON.parse(text) }
  } catch {
    return { status, response: text }
  }
}

/** `"`, CR and LF in a multipart header value, escaped as browsers do. */
function quoted (value: string): string {
  return `"${value.replace(/"/g, '%22').replace(/\r/g, '%0D').replace(/\n/g, '%0A')}"`
}

/** A multipart/form-data body: text pieces and files, with where each file starts. */
function multipartBody (fields: Record<string, string>, uploadName: string, jobs: Job[]): { boundary: string, pieces: Array<Uint8Array | Job>, starts: number[], size: number } {
  const boundary = `----fastify-chunked-upload-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`
  const encoder = new TextEncoder()
  const pieces: Array<Uint8Array | Job> = []
  const starts: number[] = []
  let size = 0
  const text = (value: string): void => {
    const bytes = encoder.encode(value)
    pieces.push(bytes)
    size += bytes.length
  }
  for (const [name, value] of Object.entries(fields)) {
    text(`--${boundary}\r\nContent-Disposition: form-data; name=${quoted(name)}\r\n\r\n${value}\r\n`)
  }
  for (const job of jobs) {
    const type = job.file.type === '' ? 'application/octet-stream' : job.file.type
    text(`--${boundary}\r\nContent-Disposition: form-data; name=${quoted(uploadName)}; filename=${quoted(job.file.name)}\r\nContent-Type: ${type}\r\n\r\n`)
    starts.push(size)
    pieces.push(job)
    size += job.file.size
    text('\r\n')
  }
  text(`--${boundary}--\r\n`)
  return { boundary, pieces, starts, size }
}

interface XhrLike {
  open (method: string, url: string): void
  setRequestHeader (name: string, value: string): void
  send (body: unknown): void
  abort (): void
  readonly status: number
  readonly responseText: string
  upload: { onprogress: ((event: { loaded: number }) => void) | null }
  onload: (() => void) | null
  onerror: (() => void) | null
  onabort: (() => void) | null
}

/**
 * Sends the body; `sent(bytes)` as it goes. Browsers: XMLHttpRequest, for its upload
 * progress. Elsewhere: fetch with a streamed body, counting the bytes it pulls.
 */
async function post (url: string, body: ReturnType<typeof multipartBody>, headers: Record<string, string>, signal: AbortSignal, sent: (bytes: number) => void): Promise<{ status: number, text: string }> {
  signal.throwIfAborted()
  const XHR = (globalThis as { XMLHttpRequest?: new () => XhrLike }).XMLHttpRequest
  /* c8 ignore start */ // browser only: test/browser.test.ts uploads over HTTP from the demo page
  if (XHR !== undefined) {
    const blob = new Blob(body.pieces.map((piece) => piece instanceof Uint8Array ? piece : piece.file as unknown as Blob))
    return await new Promise((resolve, reject) => {
      const xhr = new XHR()
      xhr.open('POST', url)
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value)
      xhr.upload.onprogress = (event) => sent(event.loaded)
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText })
      xhr.onerror = () => reject(new TypeError('network error'))
      xhr.onabort = () => reject(signal.reason)
      signal.addEventListener('abort', () => xhr.abort(), { once: true })
      xhr.send(blob)
    })
  }
  /* c8 ignore stop */
  let pulled = 0
  const chunks = (async function * () {
    for (const piece of body.pieces) {
      if (piece instanceof Uint8Array) {
        yield piece
        continue
      }
      for (let start = 0; start < piece.file.size; start += HTTP_PIECE) {
        yield new Uint8Array(await piece.file.slice(start, Math.min(start + HTTP_PIECE, piece.file.size)).arrayBuffer())
      }
    }
  })()
  const stream = new ReadableStream<Uint8Array>({
    async pull (controller) {
      const next = await chunks.next()
      if (next.done === true) return controller.close()
      controller.enqueue(next.value)
      pulled += next.value.length
      sent(pulled)
    }
  })
  const response = await fetch(url, { method: 'POST', headers, body: stream, duplex: 'half', signal } as RequestInit)
  return { status: response.status, text: await response.text() }
}

async function uploadOverHttp (url: string, jobs: Job[], options: UploadOptions): Promise<UploadResult> {
  const { onProgress, signal } = options
  const controller = new AbortController()
  const aborts = listeners()
  /** What `onProgress` threw: the upload stops and rejects with it. */
  let thrown: { error: unknown } | undefined
  const rethrow = (): void => {
    if (thrown !== undefined) throw thrown.error
  }
  const emit = (job: Job, status: UploadStatus): void => {
    if (onProgress === undefined || thrown !== undefined) return
    try {
      onProgress(job.file, { progress: job.progress, bytes: job.bytes, status })
    } catch (error) {
      thrown = { error }
      controller.abort(error)
    }
  }
  for (const job of jobs) {
    if (job.signal?.aborted === true) job.result = cancelled(job)
    // The files share one request: cancelling one cancels the request.
    aborts.on(job.signal, () => controller.abort())
  }
  aborts.on(signal, () => controller.abort(signal!.reason))
  const sending = jobs.filter((job) => job.result === undefined)
  const body = multipartBody(options.fields ?? {}, options.uploadName, sending)
  const headers = { ...options.headers, 'content-type': `multipart/form-data; boundary=${body.boundary}` }
  for (const job of sending) emit(job, 'uploading')

  let outcome: { status: number, text: string } | { error: unknown }
  try {
    outcome = await post(url, body, headers, controller.signal, (total) => {
      if (controller.signal.aborted) return // pieces pulled before the abort
      sending.forEach((job, index) => {
        const bytes = Math.max(0, Math.min(total - body.starts[index]!, job.file.size))
        if (bytes === job.bytes) return
        job.bytes = bytes
        job.progress = Math.min(99, Math.floor(bytes * 100 / job.file.size))
        emit(job, 'uploading')
      })
    })
  } catch (error) {
    outcome = { error }
  } finally {
    aborts.clear()
  }
  rethrow()
  signal?.throwIfAborted()

  let answer: { status?: number, response?: unknown } = {}
  if ('error' in outcome) {
    const message = `the upload request failed: ${(outcome.error as Error).message}`
    for (const job of sending) job.result = controller.signal.aborted ? cancelled(job) : { name: job.file.name, ok: false, code: CONNECTION_FAILED, message }
  } else {
    answer = readResponse(outcome.status, outcome.text)
    const error = answer.response as { code?: unknown, message?: unknown } | null
    for (const job of sending) {
      if (outcome.status >= 200 && outcome.status < 300) {
        job.result = { name: job.file.name, ok: true }
        job.progress = 100
        job.bytes = job.file.size
      } else {
        const code = typeof error?.code === 'string' ? error.code : `http_${outcome.status}`
        job.result = { name: job.file.name, ok: false, code, message: typeof error?.message === 'string' ? error.message : outcome.text }
      }
    }
  }
  for (const job of sending) emit(job, statusOf(job.result!))
  rethrow()
  return { files: jobs.map((job) => job.result!), ...answer }
}
