// Servers that die and come back: test/fixtures/restart-server.ts run as a child process
// (with this process's TypeScript loader) on a tmpDir that outlives it, killed with
// SIGKILL or stopped with SIGTERM, and started again on the same port, since tus clients
// keep absolute upload URLs. Children report by lines on stdout; every child still
// running at teardown is killed by its pid. Also: the fixture's writer log, and a
// tus-js-client upload that waits for the server to be back before each request.
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import * as tus from 'tus-js-client'
import type { WriterLogLine } from '../fixtures/restart-server.js'
import { Changes, PATIENCE_MS, postJson } from './index.js'

export type { WriterLogLine }

const FIXTURE = fileURLToPath(new URL('../fixtures/restart-server.ts', import.meta.url))

/** The directory the plugin's default store claims in a tmpDir (its temp files go there too). */
export function storeDirOf (tmpDir: string): string {
  return join(tmpDir, 'fastify-chunked-upload')
}

export interface Exit { code: number | null, signal: NodeJS.Signals | null }

/** One run of the fixture server. */
export class ServerProcess {
  readonly child: ChildProcess
  readonly pid: number
  /** Its stdout, line by line, as printed so far. */
  readonly lines: string[] = []
  /** Its stderr (Fastify's logs, warnings, a startup error), as printed so far. */
  stderr = ''
  /** Settles when the process exited, however. */
  readonly exited: Promise<Exit>
  #exit: Exit | undefined
  readonly #changes = new Changes()

  constructor (t: Test, port: number, tmpDir: string, writerLog: string, env: Record<string, string> = {}) {
    // Transpiled without type checks, which would take seconds at every start: tsc checks the fixture.
    this.child = spawn(process.execPath, [...process.execArgv, FIXTURE, String(port), tmpDir, writerLog], {
      env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', ...env }, stdio: ['pipe', 'pipe', 'pipe']
    })
    this.pid = this.child.pid!
    t.teardown(() => { this.#killNow() })
    this.exited = new Promise<Exit>((resolve) => this.child.once('exit', (code, signal) => {
      this.#exit = { code, signal }
      this.#changes.changed()
      resolve(this.#exit)
    }))
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      this.lines.push(line)
      this.#changes.changed()
    })
    this.child.stderr!.setEncoding('utf8').on('data', (text: string) => {
      this.stderr += text
      this.#changes.changed()
    })
  }

  get running (): boolean {
    return this.#exit === undefined
  }

  /** Everything it printed, for messages and checks. */
  output (): string {
    return `${this.lines.join('\n')}\n${this.stderr}`
  }

  /** The first stdout line that starts with `prefix`, once printed; fails if the process exits first. */
  async line (prefix: string, ms = PATIENCE_MS): Promise<string> {
    return await this.#changes.until(`a line "${prefix}…" from the server (pid ${this.pid})`, () => {
      const found = this.lines.find((line) => line.startsWith(prefix))
      if (found !== undefined) return found
      if (this.#exit !== undefined) throw new Error(`the server exited (${JSON.stringify(this.#exit)}) before printing "${prefix}…":\n${this.output()}`)
      return undefined
    }, ms)
  }

  /** Waits until its stderr matches, e.g. a log line. */
  async logged (pattern: RegExp, ms = PATIENCE_MS): Promise<string> {
    return await this.#changes.until(`stderr to match ${String(pattern)} (pid ${this.pid})`, () => pattern.exec(this.stderr)?.[0], ms)
  }

  /** Sends `signal` and resolves once the process exited. */
  async kill (signal: 'SIGKILL' | 'SIGTERM'): Promise<Exit> {
    if (this.#exit === undefined) process.kill(this.pid, signal)
    return await this.exited
  }

  #killNow (): void {
    if (this.#exit !== undefined) return
    try {
      process.kill(this.pid, 'SIGKILL')
    } catch {}
  }
}

/** The fixture, started again and again on one tmpDir and one port. */
export class RestartingServer {
  readonly tmpDir: string
  readonly writerLog: string
  port = 0
  /** The run under way, or the last one. */
  current: ServerProcess | undefined
  /** Every run so far, in order. */
  readonly runs: ServerProcess[] = []
  readonly #t: Test
  #up: Promise<void> = Promise.resolve()
  #markUp: () => void = () => {}

  constructor (t: Test, tmpDir: string, writerLog: string) {
    this.#t = t
    this.tmpDir = tmpDir
    this.writerLog = writerLog
  }

  get url (): string { return `http://127.0.0.1:${this.port}` }
  /** The resumable endpoint of POST /upload. */
  get endpoint (): string { return `${this.url}/upload/tus` }

  /** Starts a run (on a free port the first time, then on the same one) and waits until it listens. */
  async start (env: Record<string, string> = {}): Promise<ServerProcess> {
    if (this.current?.running === true) throw new Error('the server is already running')
    const run = new ServerProcess(this.#t, this.port, this.tmpDir, this.writerLog, env)
    this.current = run
    this.runs.push(run)
    const port = Number((await run.line('listening ')).split(' ')[1])
    if (this.port !== 0 && port !== this.port) throw new Error(`started on port ${port}, not ${this.port}`)
    this.port = port
    this.#markUp()
    return run
  }

  /**
   * Stops the run under way. From the moment the signal is sent until the next `start`
   * listens, `up()` is pending: clients that wait on it send nothing to a dead port.
   */
  async stop (signal: 'SIGKILL' | 'SIGTERM'): Promise<Exit> {
    this.#up = new Promise((resolve) => { this.#markUp = resolve })
    return await this.current!.kill(signal)
  }

  /** Resolves while the server is up, or once it is up again. */
  async up (): Promise<void> {
    await this.#up
  }

  /** Submits a finished upload's URL to the route (POST /upload, or `route`), which consumes it: its SHA-256 and size. */
  async consume (uploadUrl: string, route = '/upload'): Promise<{ status: number, json: any }> {
    return await postJson(`${this.url}${route}`, { file: uploadUrl })
  }
}

/** The writer log, one object per call, in order. */
export function readWriterLog (path: string): WriterLogLine[] {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw error
  }
  return text.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as WriterLogLine)
}

/** The log's events for one upload (its temp file), as `event[:detail]@run`, runs counted from 0 by pid. */
export function historyOf (log: WriterLogLine[], path: string, pids: number[]): string[] {
  return log.filter((line) => line.path === path).map((line) => {
    const detail = line.reason ?? line.offset ?? line.consumed
    return `${line.event}${detail === undefined ? '' : `:${String(detail)}`}@${pids.indexOf(line.pid)}`
  })
}

/** The files in the store's directory but its claim (which lives as long as the server). */
export async function filesInStore (tmpDir: string): Promise<string[]> {
  try {
    return (await readdir(storeDirOf(tmpDir))).filter((name) => name !== 'fcu-store-claim').sort()
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw error
  }
}

export type Protocol = 'tus-v1' | 'ietf-draft-05'

/** One exchange as tus-js-client saw it. */
export interface Exchange {
  method: string
  /** 0 when no answer came (the connection failed). */
  status: number
  /** Upload-Offset sent (PATCH) or answered (HEAD, PATCH). */
  sentOffset: number | undefined
  answeredOffset: number | undefined
}

export interface TusRun {
  upload: tus.Upload
  /** Resolves with the upload's URL when the client succeeded; rejects with its error. */
  done: Promise<string>
  /** Every exchange, in order. */
  exchanges: Exchange[]
  /** Offsets acknowledged, one per completed PATCH. */
  acked: number[]
}

export interface TusRunOptions {
  endpoint: string
  protocol: Protocol
  chunkSize: number
  /** Awaited before every request: the server being up (RestartingServer.up). */
  before?: () => Promise<void>
  uploadUrl?: string
  /** Sent with every request (an owner's, say). */
  headers?: Record<string, string>
  /** A bound that only ends a run that would hang. */
  ms?: number
}

function offsetOf (value: string | undefined | null): number | undefined {
  return value === undefined || value === null || value === '' ? undefined : Number(value)
}

/**
 * Starts a tus-js-client upload of `data`. It retries after a failed request (a dead
 * server), and waits for `before` ahead of each request, so a retry reaches the next run
 * of the server rather than a closed port.
 */
export function tusUpload (data: Buffer, options: TusRunOptions): TusRun {
  const exchanges: Exchange[] = []
  const acked: number[] = []
  let upload!: tus.Upload
  const done = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      upload.abort().catch(() => {})
      reject(new Error(`no end after ${options.ms ?? 2 * PATIENCE_MS} ms`))
    }, options.ms ?? 2 * PATIENCE_MS)
    timer.unref()
    const sent = new Map<tus.HttpRequest, Exchange>()
    upload = new tus.Upload(data, {
      endpoint: options.endpoint,
      uploadUrl: options.uploadUrl ?? null,
      chunkSize: options.chunkSize,
      protocol: options.protocol,
      retryDelays: [0, 0, 0, 0, 0],
      headers: options.headers ?? {},
      metadata: { filename: 'movie.bin', filetype: 'application/octet-stream' },
      onBeforeRequest: async (req: tus.HttpRequest) => {
        await options.before?.()
        const exchange: Exchange = { method: req.getMethod(), status: 0, sentOffset: offsetOf(req.getHeader('Upload-Offset')), answeredOffset: undefined }
        sent.set(req, exchange)
        exchanges.push(exchange)
      },
      onAfterResponse: (req: tus.HttpRequest, res: tus.HttpResponse) => {
        const exchange = sent.get(req)
        if (exchange === undefined) return
        exchange.status = res.getStatus()
        exchange.answeredOffset = offsetOf(res.getHeader('Upload-Offset'))
      },
      onChunkComplete: (_size: number, accepted: number) => { acked.push(accepted) },
      onSuccess: () => {
        clearTimeout(timer)
        resolve(upload.url!)
      },
      onError: (error: Error) => {
        clearTimeout(timer)
        const response = (error as tus.DetailedError).originalResponse
        reject(new Error(`${error.message}${response === null || response === undefined ? '' : ` (${response.getStatus()}: ${response.getBody()})`}`))
      }
    } as tus.UploadOptions & { protocol: Protocol })
    upload.start()
  })
  return { upload, done, exchanges, acked }
}
