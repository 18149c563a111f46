// The client of fastify-chunked-upload: sends files to an upload route over its
// WebSocket channel (PROTOCOL.md) or as one multipart/form-data POST, with progress
// and cancellation. Browsers and Node 20+. It imports nothing, so a browser can load
// the built file as is (`<script type="module">`).

/** The subprotocol of version 1 of the channel protocol. */
export const SUBPROTOCOL = 'fastify-chunked-upload.v1'

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
}

/** The socket opened, was refused, or dropped: codes of files that never finished. */
const CONNECTION_FAILED = 'connection_failed'
const CONNECTION_CLOSED = 'connection_closed'
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
    return { file, signal, id: 0, ref: undefined, chunkSize: 0, sent: 0, pending: [], frame: undefined, reading: false, progress: 0, bytes: 0, result: undefined }
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
  progress: number
  bytes: number
  result: FileResult | undefined
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
  ref?: string
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
  const { uploadName, onProgress, signal } = options

  return new Promise((resolve, reject) => {
    const aborts = listeners()
    /** Announced, unfinished entries by id, in round-robin order for sending. */
    const live = new Map<number, Job>()
    let queued = 0
    let nextId = 1
    let window = 1
    let inflight = 0
    let opened = false
    let finished = false

    const send = (data: string | Uint8Array): void => socket.send(data)

    function finish (): void {
      finished = true
      aborts.clear()
      socket.close(1000)
    }

    /** Cancels everything in flight, discards the finished entries, and rejects. */
    function abortAll (reason: unknown): void {
      if (finished) return
      for (const job of jobs) {
        if (job.id !== 0 && (job.result === undefined || job.result.ok)) send(JSON.stringify({ type: 'cancel', id: job.id }))
      }
      finish()
      reject(reason)
    }

    function emit (job: Job, status: UploadStatus): void {
      if (onProgress === undefined) return
      try {
        onProgress(job.file, { progress: job.progress, bytes: job.bytes, status })
      } catch (error) {
        abortAll(error)
      }
    }

    /** The file's outcome; frees its concurrency slot and its window slots. */
    function end (job: Job, result: FileResult): void {
      if (job.result !== undefined || finished) return
      job.result = result
      live.delete(job.id)
      inflight -= job.pending.length
      job.pending.length = 0
      job.frame = undefined
      if (result.ok) {
        job.progress = 100
        job.bytes = job.file.size
      }
      emit(job, statusOf(result))
      startMore()
      pump()
      if (!finished && jobs.every((other) => other.result !== undefined)) {
        finish()
        resolve(jobs.map((other) => other.result!))
      }
    }

    /** Every unfinished file fails with this code. */
    function failAll (code: string, message: string): void {
      for (const job of jobs) end(job, { name: job.file.name, ok: false, code, message })
    }

    /** Announces files while fewer than `concurrency` are in flight. */
    function startMore (): void {
      for (;;) {
        if (!opened || finished || live.size === concurrency || queued === jobs.length) return
        const job = jobs[queued++]!
        if (job.result !== undefined) continue
        job.id = nextId++
        live.set(job.id, job)
        const { name, size, type, lastModified } = job.file
        send(JSON.stringify({ type: 'announce', id: job.id, uploadName, name, size, mimeType: type, lastModified }))
      }
    }

    /** Sends chunk frames, round-robin over the files, while the window has room. */
    function pump (): void {
      for (;;) {
        if (finished || inflight >= window) return
        let job: Job | undefined
        for (const candidate of live.values()) {
          if (candidate.ref !== undefined && !candidate.reading && candidate.sent < candidate.file.size) {
            job = candidate
            break
          }
        }
        if (job === undefined) return
        live.delete(job.id)
        live.set(job.id, job)
        const start = job.sent
        const stop = Math.min(start + job.chunkSize, job.file.size)
        job.sent = stop
        job.reading = true
        job.pending.push(stop)
        inflight++
        job.file.slice(start, stop).arrayBuffer().then((data) => {
          if (data.byteLength !== stop - start) throw new Error(`read ${data.byteLength} bytes at ${start} instead of ${stop - start}: the file changed`)
          job.reading = false
          if (job.result !== undefined || finished) return
          send(chunkFrame(job, start, data))
          pump()
        }).catch((error: unknown) => {
          job.reading = false
          if (job.result !== undefined || finished) return
          send(JSON.stringify({ type: 'cancel', id: job.id }))
          end(job, { name: job.file.name, ok: false, code: 'read_failed', message: `could not read the file: ${(error as Error)?.message}` })
        })
      }
    }

    function receive (message: ServerMessage): void {
      if (message.type === 'error' && message.id === undefined) {
        return failAll(String(message.code), String(message.message))
      }
      const job = live.get(message.id!)
      if (job === undefined) return // a file this client cancelled or gave up on
      switch (message.type) {
        case 'accepted':
          job.ref = message.ref
          job.chunkSize = message.chunkSize!
          window = message.window!
          emit(job, 'uploading')
          return pump()
        case 'ack':
          // One ack may cover several frames: every frame that ends at or before its offset.
          while (job.pending.length > 0 && job.pending[0]! <= message.offset!) {
            job.pending.shift()
            inflight--
          }
          job.progress = message.progress!
          job.bytes = message.offset!
          emit(job, 'uploading')
          return pump()
        case 'done':
          return end(job, { name: job.file.name, ok: true, ref: message.ref! })
        case 'error':
          return end(job, { name: job.file.name, ok: false, code: message.code!, message: message.message! })
      }
    }

    for (const job of jobs) {
      if (job.signal?.aborted === true) job.result = cancelled(job)
      aborts.on(job.signal, () => {
        if (job.id !== 0 && job.result === undefined) send(JSON.stringify({ type: 'cancel', id: job.id }))
        end(job, cancelled(job))
      })
    }
    aborts.on(signal, () => abortAll(signal!.reason))
    if (jobs.every((job) => job.result !== undefined)) {
      aborts.clear()
      return resolve(jobs.map((job) => job.result!))
    }

    const socket = new WebSocketClass(url, [SUBPROTOCOL], options.headers === undefined ? undefined : { headers: options.headers })
    socket.binaryType = 'arraybuffer'
    socket.onopen = () => {
      opened = true
      startMore()
    }
    socket.onmessage = (event: { data: unknown }) => {
      if (finished) return
      let message: ServerMessage
      try {
        message = Object(JSON.parse(event.data as string)) as ServerMessage
      } catch {
        // binary, or not JSON: no file can be trusted to be where this client thinks
        return failAll(PROTOCOL_ERROR, 'the server sent a message that is not JSON')
      }
      receive(message)
    }
    socket.onerror = () => {} // 'close' follows
    socket.onclose = (event: { code: number, reason: string }) => {
      if (finished) return
      const how = `${event.code}${event.reason === '' ? '' : `: ${event.reason}`}`
      const wasOpen = opened
      opened = false // nothing more starts
      if (wasOpen) failAll(CONNECTION_CLOSED, `the upload channel closed (${how})`)
      else failAll(CONNECTION_FAILED, `could not open the upload channel ${url} (${how})`)
    }
  })
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
