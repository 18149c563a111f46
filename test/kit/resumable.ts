// Raw HTTP for the resumable endpoint: each request on a fresh connection to 127.0.0.1,
// every header exactly as given (nothing added but Host, and Content-Length for a whole
// body), and the answer as received. Bodies may be streamed, stalled or cut by the test.
import { request, type ClientRequest, type IncomingHttpHeaders } from 'node:http'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import type { ChunkedUploadOptions, UploadConfig, WriterFactory } from '../../lib/index.js'
import { Recorder, bytes, checkLetGo, postJson, sha256, startApp, stillServes, tmpDirFor, type App, type Faults } from './index.js'

/**
 * Controls the recorder's writers: while shut, `init` and `writeChunk` wait for `open()`;
 * with `delay`, each `writeChunk` takes that long on the (possibly fake) clock. `held`
 * counts calls waiting (a barrier for tests).
 */
export class WriterGate {
  held = 0
  delay = 0
  /** false: `init` passes even while shut (only `writeChunk` is held). */
  holdInit = true
  #shut = false
  readonly #waiting: Array<() => void> = []

  shut (): void { this.#shut = true }

  open (): void {
    this.#shut = false
    for (const resume of this.#waiting.splice(0)) resume()
  }

  async #pass (delay: number, hold = true): Promise<void> {
    this.held++
    try {
      if (this.#shut && hold) await new Promise<void>((resolve) => this.#waiting.push(resolve))
      if (delay > 0) await new Promise<void>((resolve) => setTimeout(resolve, delay))
    } finally {
      this.held--
    }
  }

  factory (recorder: Recorder): WriterFactory {
    const inner = recorder.writer
    const writer = {
      ...inner,
      init: async (options: unknown) => {
        await this.#pass(0, this.holdInit)
        return await inner.init(options)
      },
      writeChunk: async (data: Buffer, state: Parameters<typeof inner.writeChunk>[1]) => {
        await this.#pass(this.delay)
        return await inner.writeChunk(data, state)
      }
    }
    return () => [writer, { level: 'test' }]
  }
}

/** A header value of `undefined` leaves the header out (`{ 'tus-resumable': undefined }`). */
export type Headers = Record<string, string | number | undefined>

export interface Reply {
  /** 0 when the connection ended without an answer. */
  status: number
  headers: IncomingHttpHeaders
  body: string
  /** The body parsed as JSON, when it is. */
  json: any
  /** The method and path asked, for messages. */
  asked: string
}

export const TUS: Headers = { 'tus-resumable': '1.0.0' }
export const OCTETS = 'application/offset+octet-stream'
export const PARTIAL = 'application/partial-upload'

/** Headers of a tus 1.0 PATCH at `offset`. */
export function patchHeaders (offset: number, more: Headers = {}): Headers {
  return { ...TUS, 'content-type': OCTETS, 'upload-offset': offset, ...more }
}

/** Headers of the IETF draft: an interop version instead of Tus-Resumable. */
export function ietf (version: string | number, more: Headers = {}): Headers {
  return { 'tus-resumable': undefined, 'upload-draft-interop-version': String(version), ...more }
}

/** RFC 7231 (RFC 9110) IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`. */
export const IMF_FIXDATE = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/

export interface Open {
  req: ClientRequest
  /** Settles with the answer, or status 0 if the connection ended first. */
  reply: Promise<Reply>
}

/**
 * Starts a request whose body the caller writes (`req.write`, `req.end`) or cuts
 * (`req.destroy()`). Without a content-length header the body is sent chunked.
 */
export function open (url: string, method: string, headers: Headers = TUS, log?: Reply[]): Open {
  const sent: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) if (value !== undefined) sent[name] = String(value)
  const target = new URL(url)
  const asked = `${method} ${target.pathname}${target.search}`
  const req = request(url, { method, headers: sent, agent: false })
  const reply = new Promise<Reply>((resolve) => {
    let settled = false
    const done = (r: Reply): void => {
      if (settled) return
      settled = true
      log?.push(r)
      resolve(r)
    }
    req.on('error', () => done({ status: 0, headers: {}, body: '', json: undefined, asked }))
    req.on('close', () => done({ status: 0, headers: {}, body: '', json: undefined, asked }))
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      const end = (): void => {
        const body = Buffer.concat(chunks).toString('utf8')
        let json: unknown
        try {
          json = body === '' ? undefined : JSON.parse(body)
        } catch {}
        done({ status: res.statusCode ?? 0, headers: res.headers, body, json, asked })
      }
      res.on('end', end)
      res.on('error', end)
      res.on('aborted', end)
    })
  })
  return { req, reply }
}

/** One whole request. */
export async function send (url: string, method: string, headers: Headers = TUS, body?: Buffer | string, log?: Reply[]): Promise<Reply> {
  const { req, reply } = open(url, method, headers, log)
  // Bodyless methods get no Content-Length from Node: the request is complete as it is.
  if (body === undefined) req.end()
  else req.end(body)
  return await reply
}

export interface Setup extends App {
  recorder: Recorder
  dir: string
  /** The route's resumable endpoint: `${url}/up/tus`. */
  endpoint: string
  /** Every answer the endpoint gave through `tus()`, for checks across a whole test. */
  replies: Reply[]
  /** Requests as they arrived: `METHOD path offset`, and `→ location` for a creation. */
  seen: string[]
  /** A request to the endpoint (a path relative to the server, or a full URL), logged. */
  tus: (method: string, path: string, headers?: Headers, body?: Buffer | string) => Promise<Reply>
  /** Creates an upload (tus 1.0) and returns its path, `/up/tus/<id>`. */
  create: (headers?: Headers, body?: Buffer | string) => Promise<string>
  /** POSTs the refs as JSON to the route, as the client does once its uploads are done. */
  claim: (refs: unknown, headers?: Record<string, string>, path?: string) => Promise<{ status: number, json: any }>
  /** Closes the server and checks the guarantees: every writer closed once, no overlap, no stray file. */
  finish: (t: Test) => Promise<void>
}

export interface SetupOptions {
  faults?: Faults
  /** The temp-file writer instead of the recording one. */
  tmp?: boolean
  plugin?: ChunkedUploadOptions
  /** More upload names on the route. */
  names?: Record<string, Partial<UploadConfig>>
  route?: Record<string, unknown>
  /** Runs before the routes are declared (hooks, other plugins). */
  before?: (app: FastifyInstance) => void
  /** The recorder's writers behind this gate. */
  gate?: WriterGate
}

/**
 * POST /up with the resumable upload name `file` (recording writer, or the temp-file
 * writer with `tmp`); its endpoint is /up/tus. The route consumes what it is given and
 * answers each file's name, type, size and sha256.
 */
export async function setupResumable (t: Test, config: Partial<UploadConfig> = {}, options: SetupOptions = {}): Promise<Setup> {
  const recorder = new Recorder(options.faults)
  const dir = await tmpDirFor(t)
  const seen: string[] = []
  const replies: Reply[] = []
  const started = await startApp(t, (app) => {
    const lines = new WeakMap<object, number>()
    app.addHook('onRequest', async (request) => {
      const offset = request.headers['upload-offset']
      lines.set(request, seen.push(`${request.method} ${request.url.split('?')[0]!}${offset === undefined ? '' : ` ${String(offset)}`}`) - 1)
    })
    // A creation is logged as it arrived, with the upload it made once answered.
    app.addHook('onSend', async (request, reply) => {
      const location = reply.getHeader('location')
      const line = lines.get(request)
      if (request.method === 'POST' && location !== undefined && line !== undefined) seen[line] += ` → ${String(location)}`
    })
    options.before?.(app)
    const writer = options.tmp === true ? {} : { writer: options.gate?.factory(recorder) ?? recorder.factory }
    const names = { file: { accept: 'any', resumable: true, maxEntries: 3, maxFileSize: 1_000_000, chunkSize: 16_384, ...writer, ...config }, ...options.names }
    app.post('/up', { ...options.route, allowUpload: names as Record<string, UploadConfig> }, async (request) => {
      const files: unknown[] = []
      for (const name of Object.keys(names)) {
        files.push(...await request.uploads.consume(name, (meta: { sha256?: string, bytes?: number, size?: number, path?: string }, entry) => ({
          uploadName: entry.uploadName,
          name: entry.clientName,
          type: entry.clientType,
          size: meta.bytes ?? meta.size,
          sha256: meta.sha256
        })))
      }
      return { files }
    })
  }, { tmpDir: dir, ...options.plugin })
  t.teardown(() => recorder.release())
  const endpoint = `${started.url}/up/tus`
  const tus = async (method: string, path: string, headers: Headers = TUS, body?: Buffer | string): Promise<Reply> =>
    await send(path.startsWith('http') ? path : started.url + path, method, headers, body, replies)
  let finished = false
  const setup: Setup = {
    ...started,
    recorder,
    dir,
    endpoint,
    replies,
    seen,
    tus,
    async create (headers = { ...TUS, 'upload-length': 1000 }, body) {
      const reply = await tus('POST', '/up/tus', headers, body)
      if (reply.status !== 201) throw new Error(`creation answered ${reply.status}: ${reply.body}`)
      return new URL(String(reply.headers.location), endpoint).pathname
    },
    async claim (refs, headers = {}, path = '/up') {
      return await postJson(started.url + path, refs, headers)
    },
    async finish (t) {
      if (finished) return
      finished = true
      await stillServes(t, started.url)
      const bare = replies.filter((r) => r.status !== 0 && !r.asked.startsWith('OPTIONS') && r.headers['tus-resumable'] !== '1.0.0')
      t.same(bare.map((r) => `${r.asked} → ${r.status}`), [], 'every answer but OPTIONS carries Tus-Resumable: 1.0.0')
      await started.app.close()
      await checkLetGo(t, recorder, dir)
    }
  }
  return setup
}

/**
 * An upload of 10 000 bytes (chunkTimeout 30 s) and its PATCH, which has sent its first
 * 1000 bytes to a writer behind a shut gate: once `gate.held === 1` the PATCH holds the
 * upload with a writer call in flight, until `gate.open()`.
 */
export async function heldPatch (t: Test): Promise<{ s: Setup, gate: WriterGate, path: string, running: Open }> {
  const gate = new WriterGate()
  const s = await setupResumable(t, { chunkTimeout: 30_000 }, { gate })
  const path = await s.create({ ...TUS, 'upload-length': 10_000 })
  gate.shut()
  const running = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': 10_000 }))
  running.req.write(bytes(1000))
  return { s, gate, path, running }
}

/** The one writer record whose bytes are `data`, by digest. */
export function recordOf (recorder: Recorder, data: Buffer): Recorder['records'][number] | undefined {
  const digest = sha256(data)
  return recorder.records.find((r) => r.bytes === data.length && r.hash.copy().digest('hex') === digest)
}

export function idOf (path: string): string {
  return path.slice(path.lastIndexOf('/') + 1)
}
