// The shared test kit: a recording writer that checks the guarantees as it goes,
// temp directories that must end empty, real servers on 127.0.0.1, multipart bodies
// built by hand, and raw sockets for the faults a polite client never makes.
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { clearTimeout, setTimeout } from 'node:timers'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import chunkedUpload, { MemoryWriter, TmpFileWriter, type ChunkedUploadOptions, type CloseReason, type UploadWriter, type WriterFactory } from '../../lib/index.js'
import { decodeParked, decodeUpload } from '../../lib/stores/store.js'

/** Everything one writer instance saw. */
export interface WriterRecord {
  id: number
  initOptions: unknown
  chunks: number[]
  hash: ReturnType<typeof createHash>
  closes: CloseReason[]
  bytes: number
  overlapped: boolean
  outOfOrder: boolean
}

export interface Faults {
  /** `init` throws. */
  initThrows?: boolean
  /** `writeChunk` throws on this call (1-based). */
  throwOnChunk?: number
  /** `close(…, 'done')` throws. */
  closeDoneThrows?: boolean
  /** `close` for 'cancel' or an error throws. */
  closeCancelThrows?: boolean
  /** Each `writeChunk` waits this long (ms). */
  chunkDelay?: number
  /** `writeChunk` on this call (1-based) never settles. */
  hangOnChunk?: number
  /** `init` never settles (until `release`). */
  hangInit?: boolean
  /** Each `close` waits this long (ms) before it settles. */
  closeDelay?: number
}

/**
 * How long a wait may take before the test fails. It bounds waits for something that
 * must happen (a close, an answer) and never orders anything: on a loaded machine these
 * only take longer, so it is generous, and a test that passes never reaches it.
 */
export const PATIENCE_MS = 60_000

/**
 * Waits on something that changes: `until` re-checks its condition each time the
 * owner calls `changed()` (no polling), and fails after PATIENCE_MS. These timers are
 * node:timers', bound at import: they stay real under fake timers.
 */
export class Changes {
  readonly #waiters = new Set<() => void>()

  changed (): void {
    for (const check of [...this.#waiters]) check()
  }

  async until<T> (what: string, fn: () => T | undefined | false, ms = PATIENCE_MS): Promise<T> {
    return await new Promise<T>((resolve, reject) => {
      const check = (): void => {
        let value: T | undefined | false
        try {
          value = fn()
        } catch (error) {
          done()
          reject(error)
          return
        }
        if (value === undefined || value === false) return
        done()
        resolve(value)
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`))
      }, ms)
      const done = (): void => {
        clearTimeout(timer)
        this.#waiters.delete(check)
      }
      this.#waiters.add(check)
      check()
    })
  }
}

/**
 * A writer factory whose writers record every call and keep their bytes in memory.
 * It tracks overlap (a call while another is in flight) and the order of calls.
 */
export class Recorder {
  readonly records: WriterRecord[] = []
  faults: Faults
  #next = 0
  /** Settles every hung call, so a test can finish cleanly. */
  readonly #hung: Array<() => void> = []
  readonly #changes = new Changes()

  constructor (faults: Faults = {}) {
    this.faults = faults
  }

  readonly factory: WriterFactory = () => [this.writer, { level: 'test' }]

  release (): void {
    for (const settle of this.#hung.splice(0)) settle()
  }

  /** Waits until `fn` holds, re-checked after every writer call (init, chunk, close) and every hang. */
  async until (what: string, fn: () => boolean): Promise<void> {
    await this.#changes.until(what, fn)
  }

  /** Resolves when a writer call hangs (a `hangInit` or `hangOnChunk` fault). */
  async hung (): Promise<void> {
    await this.#changes.until('a writer call to hang', () => this.#hung.length > 0)
  }

  readonly writer: UploadWriter<unknown, { record: WriterRecord, busy: boolean, buffers: Buffer[] }, { bytes: number, sha256: string, buffer: Buffer }> = {
    init: async (options) => {
      if (this.faults.hangInit === true) await this.#hang()
      if (this.faults.initThrows === true) throw new Error('init failed on purpose')
      const record: WriterRecord = {
        id: this.#next++, initOptions: options, chunks: [], hash: createHash('sha256'), closes: [], bytes: 0, overlapped: false, outOfOrder: false
      }
      this.records.push(record)
      this.#changes.changed()
      return { record, busy: false, buffers: [] }
    },
    meta: (state) => ({
      bytes: state.record.bytes,
      sha256: state.record.hash.copy().digest('hex'),
      buffer: Buffer.concat(state.buffers)
    }),
    writeChunk: async (data, state) => {
      const { record } = state
      if (state.busy) record.overlapped = true
      if (record.closes.length > 0) record.outOfOrder = true
      state.busy = true
      try {
        const call = record.chunks.length + 1
        if (this.faults.hangOnChunk === call) await this.#hang()
        if (this.faults.chunkDelay !== undefined) await sleep(this.faults.chunkDelay)
        if (this.faults.throwOnChunk === call) throw new Error(`chunk ${call} failed on purpose`)
        record.chunks.push(data.length)
        record.bytes += data.length
        record.hash.update(data)
        state.buffers.push(Buffer.from(data))
        return state
      } finally {
        state.busy = false
        this.#changes.changed()
      }
    },
    close: async (state, reason) => {
      const { record } = state
      if (state.busy) record.overlapped = true
      record.closes.push(reason)
      this.#changes.changed()
      if (this.faults.closeDelay !== undefined) await sleep(this.faults.closeDelay)
      if (reason === 'done' && this.faults.closeDoneThrows === true) throw new Error('close failed on purpose')
      if (reason !== 'done' && this.faults.closeCancelThrows === true) throw new Error('close(cancel) failed on purpose')
      return state
    }
  }

  async #hang (): Promise<void> {
    const hung = new Promise<void>((resolve) => this.#hung.push(resolve))
    this.#changes.changed()
    await hung
  }

  /** Guarantees 1 and 2 on every writer seen so far (one assertion each, whatever the count). */
  check (t: Test): void {
    const describe = (r: WriterRecord): string => `writer ${r.id} closes=${JSON.stringify(r.closes)}`
    t.same(this.records.filter((r) => r.closes.length !== 1).map(describe), [], 'every writer closed exactly once')
    t.same(this.records.filter((r) => r.overlapped).map(describe), [], 'calls on a writer never overlapped')
    t.same(this.records.filter((r) => r.outOfOrder).map(describe), [], 'no chunk after close')
  }

  reasons (): string[] {
    return this.records.map((r) => {
      const reason = r.closes[0]
      return typeof reason === 'object' ? 'error' : String(reason)
    })
  }
}

export function sha256 (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Deterministic bytes of any size. */
export function bytes (size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size)
  let x = seed * 2654435761 >>> 0
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}

/** A temp directory that the test asserts is empty at the end. */
export async function tmpDirFor (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'fcu-test-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** The default store's directory in a tmpDir, where the plugin's temp files go too. */
export const STORE_DIR = 'fastify-chunked-upload'
/** The file by which a running process claims that directory: not a leftover. */
const STORE_CLAIM = 'fcu-store-claim'

/** What is left in a tmpDir (inside the store's directory too) but the store's claim. */
export async function strayFiles (dir: string): Promise<string[]> {
  const names = await readdir(dir)
  const stray = names.filter((name) => name !== STORE_DIR)
  if (names.includes(STORE_DIR)) {
    for (const name of await readdir(join(dir, STORE_DIR))) if (name !== STORE_CLAIM) stray.push(join(STORE_DIR, name))
  }
  return stray
}

/**
 * What is left in a tmpDir but resumable uploads kept for the next run (a shutdown keeps
 * unfinished ones, and finished ones waiting for their ref): their records in the store's
 * directory, and the files they name.
 */
export async function leftBehind (dir: string): Promise<string[]> {
  const stray = await strayFiles(dir)
  const kept = new Set<string>()
  for (const name of stray.filter((path) => /\/fcu-store-(upload|parked)-.*\.json$/.test(path))) {
    const text = await readFile(join(dir, name), 'utf8').catch(() => undefined)
    if (text === undefined) continue
    kept.add(name)
    const { path } = (name.includes('fcu-store-parked-') ? decodeParked(text) : decodeUpload(text)).snapshot as { path?: string }
    if (path !== undefined) kept.add(relative(dir, path))
  }
  return stray.filter((path) => !kept.has(path))
}

/** The temp-file writer's files in a tmpDir (inside the store's directory too), relative to it. */
export async function tempFiles (dir: string): Promise<string[]> {
  return (await strayFiles(dir)).filter((path) => /(^|\/)upload-[0-9a-f]{32}$/.test(path))
}

/** Where the plugin puts its temp files in `tmpDir` (with the default store). */
export function filesDir (tmpDir: string): string {
  return join(tmpDir, STORE_DIR)
}

/**
 * Polls `fn` every 10 ms until it returns something (not undefined or false), and
 * returns that; fails after `ms`, a bound on what must happen, never an ordering.
 * Only for what has no event to wait on (files on disk, a server's socket): where the
 * thing watched has one, wait on it instead (Changes, Recorder.until, rawSocket's until).
 */
export async function until<T> (what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = PATIENCE_MS): Promise<T> {
  const value = await poll(fn, ms)
  if (value === undefined) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
  return value
}

/** As `until`, for a check: whether `fn` held within `ms`. */
export async function eventually (fn: () => boolean | Promise<boolean>, ms = PATIENCE_MS): Promise<boolean> {
  return await poll(fn, ms) !== undefined
}

/** `fn()` once it returns something, or undefined after `ms`. */
async function poll<T> (fn: () => T | undefined | false | Promise<T | undefined | false>, ms: number): Promise<T | undefined> {
  // Counted in real sleeps (node:timers/promises, bound at import), not by Date: fake
  // timers stop Date and leave these sleeps real.
  for (let waited = 0; ; waited += 10) {
    const value = await fn()
    if (value !== undefined && value !== false) return value
    if (waited >= ms) return undefined
    await sleep(10)
  }
}

/**
 * Once the server let its uploads go: every writer got its close, the recorder's
 * guarantees held (see `check`), and no temp file is left in `dir`.
 */
export async function checkLetGo (t: Test, recorder: Recorder, dir: string): Promise<void> {
  t.ok(await eventually(() => recorder.records.every((r) => r.closes.length > 0)), 'every writer got its close')
  recorder.check(t)
  t.ok(await eventually(async () => (await leftBehind(dir)).length === 0), 'no stray temp file') || t.comment(await leftBehind(dir))
}

export interface App {
  app: FastifyInstance
  url: string
  port: number
}

/**
 * A Fastify app with the plugin, given routes, listening on 127.0.0.1. Closed at
 * teardown, after checking it still answers.
 */
export async function startApp (
  t: Test,
  routes: (app: FastifyInstance) => void,
  options: ChunkedUploadOptions = {},
  serverOptions: FastifyServerOptions = {}
): Promise<App> {
  const app = Fastify(serverOptions)
  // Each app its own tmpDir: the default store's directory is claimed by one at a time.
  const tmpDir = options.tmpDir ?? (options.store === undefined ? await tmpDirFor(t) : undefined)
  await app.register(chunkedUpload, { ...options, tmpDir })
  app.get('/health', async () => ({ ok: true }))
  routes(app)
  return await listen(t, app)
}

/** Listens on an ephemeral 127.0.0.1 port; closed at teardown. */
export async function listen (t: Test, app: FastifyInstance): Promise<App> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  t.teardown(() => app.close())
  return { app, url: `http://127.0.0.1:${port}`, port }
}

export async function stillServes (t: Test, url: string): Promise<void> {
  const response = await fetch(`${url}/health`)
  t.equal(response.status, 200, 'the server still answers')
}

/** POSTs JSON to the route and returns status and body. */
export async function postJson (url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number, json: any }> {
  const response = await fetch(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } })
  return { status: response.status, json: await response.json() }
}

export interface Part {
  name: string
  filename?: string
  type?: string
  data: Buffer | string
}

/** A multipart/form-data body, built by hand so tests control every byte. */
export function multipart (parts: Part[], boundary = 'testboundary1234'): { body: Buffer, contentType: string } {
  const chunks: Buffer[] = []
  for (const part of parts) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"`
    if (part.filename !== undefined) head += `; filename="${part.filename}"`
    head += '\r\n'
    if (part.type !== undefined) head += `Content-Type: ${part.type}\r\n`
    chunks.push(Buffer.from(head + '\r\n'), Buffer.from(part.data), Buffer.from('\r\n'))
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`))
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` }
}

export interface RawResponse { status: number, headers: string, body: string }

/** Parses the first HTTP response out of what a raw socket received. */
export function parseResponse (text: string): RawResponse | undefined {
  const end = text.indexOf('\r\n\r\n')
  if (end === -1) return undefined
  const head = text.slice(0, end)
  const status = Number(head.split(' ')[1])
  return { status, headers: head, body: text.slice(end + 4) }
}

export interface RawSocket extends Socket {
  /** Everything received so far, as latin1. */
  received: () => string
  /** Waits until `fn` holds, re-checked on every byte received and at the socket's end and close. */
  until: <T>(what: string, fn: () => T | undefined | false) => Promise<T>
}

/** Opens a raw socket to the app. */
export async function rawSocket (port: number): Promise<RawSocket> {
  const socket = connect(port, '127.0.0.1')
  const changes = new Changes()
  let data = ''
  socket.on('data', (chunk) => {
    data += chunk.toString('latin1')
    changes.changed()
  })
  socket.on('error', () => {})
  socket.on('end', () => changes.changed())
  socket.on('close', () => changes.changed())
  await new Promise<void>((resolve) => socket.once('connect', resolve))
  return Object.assign(socket, { received: () => data, until: async <T>(what: string, fn: () => T | undefined | false) => await changes.until(what, fn) })
}

/** Whether a raw socket got a whole JSON answer, or was closed. */
function answeredOrClosed (socket: RawSocket): boolean {
  const text = socket.received()
  return socket.destroyed || socket.readableEnded || (text.includes('\r\n\r\n{') && text.trimEnd().endsWith('}'))
}

/** Sends a whole request on a raw socket and waits for the server to answer (a JSON body) or close. */
export async function rawRequest (port: number, head: string, body: Buffer | string = ''): Promise<RawResponse | undefined> {
  const socket = await rawSocket(port)
  socket.write(head)
  socket.write(body)
  await socket.until('an answer or the socket\'s end', () => answeredOrClosed(socket))
  socket.destroy()
  return parseResponse(socket.received())
}

export { MemoryWriter, TmpFileWriter, sleep }
