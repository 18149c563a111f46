// Test helpers for the client library (the app itself is kit/channel.ts's
// startChannelApp): files of any size, a `ws` WebSocket that records what crosses it
// both ways, and the demo as a user runs it.
import { spawn, type ChildProcess } from 'node:child_process'
import type { Test } from 'tap'
import { WebSocket } from 'ws'
import type { FileLike, WebSocketConstructor } from '../../client/index.js'
import { bytes, Changes, Recorder } from './index.js'

/** A file of deterministic bytes (Node's File: a real Blob). */
export function file (name: string, size: number, type = '', seed = size): File {
  return new File([bytes(size, seed)], name, { type, lastModified: 1_700_000_000_000 })
}

/**
 * A file whose reads go through `read(start, end, data)` first: it may wait, throw, or
 * return other bytes. For files that change or stall while they are read.
 */
export function fileWith (source: File, read: (start: number, end: number, data: ArrayBuffer) => Promise<ArrayBuffer> | ArrayBuffer): FileLike {
  return {
    name: source.name,
    size: source.size,
    type: source.type,
    lastModified: source.lastModified,
    slice: (start, end) => ({ arrayBuffer: async () => await read(start, end, await source.slice(start, end).arrayBuffer()) })
  }
}

/** What crossed one socket, in order. */
export type WireEvent =
  | { dir: 'out', message: Record<string, unknown> }
  | { dir: 'out', frame: { id: number, offset: number, length: number } }
  | { dir: 'in', message: Record<string, unknown> }
  | { dir: 'close', code: number, reason: string }

export interface Wire {
  url: string
  protocols: string[]
  options: unknown
  events: WireEvent[]
}

/**
 * The `ws` WebSocket, observed: every socket the client opens logs what it sends (frames
 * parsed from their header) and what it receives, in order. The socket itself is real.
 */
export function recordingWebSocket (): { WebSocket: WebSocketConstructor, wires: Wire[] } {
  const wires: Wire[] = []
  class RecordingWebSocket extends WebSocket {
    readonly wire: Wire
    constructor (url: string, protocols: string[], options?: object) {
      super(url, protocols, options)
      this.wire = { url, protocols, options, events: [] }
      wires.push(this.wire)
      this.addEventListener('message', (event) => {
        let message: Record<string, unknown>
        try {
          message = JSON.parse(String(event.data))
        } catch {
          message = { unreadable: String(event.data) }
        }
        this.wire.events.push({ dir: 'in', message })
      })
      this.addEventListener('close', (event) => {
        this.wire.events.push({ dir: 'close', code: event.code, reason: event.reason })
      })
    }

    override send (data: unknown, ...rest: unknown[]): void {
      if (typeof data === 'string') {
        this.wire.events.push({ dir: 'out', message: JSON.parse(data) })
      } else {
        const frame = Buffer.from(data as Uint8Array)
        this.wire.events.push({ dir: 'out', frame: { id: frame.readUInt32BE(0), offset: Number(frame.readBigUInt64BE(4)), length: frame.length - 12 } })
      }
      super.send(data as Buffer, ...rest as [])
    }
  }
  return { WebSocket: RecordingWebSocket, wires }
}

/** Messages of one type sent or received on a wire. */
export function messages (wire: Wire, dir: 'in' | 'out', type: string): Array<Record<string, unknown>> {
  return wire.events.flatMap((event) => event.dir === dir && 'message' in event && event.message.type === type ? [event.message] : [])
}

export function frames (wire: Wire, id?: number): Array<{ id: number, offset: number, length: number }> {
  return wire.events.flatMap((event) => 'frame' in event && (id === undefined || event.frame.id === id) ? [event.frame] : [])
}

/** The most chunk frames ever unanswered at once (an ack answers one; an entry's end answers all of its). */
export function mostUnacked (wire: Wire): number {
  const open = new Map<unknown, number>()
  let total = 0
  let most = 0
  for (const event of wire.events) {
    if ('frame' in event) {
      open.set(event.frame.id, (open.get(event.frame.id) ?? 0) + 1)
      total++
    } else if (event.dir === 'in' && event.message.type === 'ack') {
      open.set(event.message.id, open.get(event.message.id)! - 1)
      total--
    } else if (event.dir === 'in' && (event.message.type === 'done' || event.message.type === 'error')) {
      total -= open.get(event.message.id) ?? 0
      open.delete(event.message.id)
    }
    most = Math.max(most, total)
  }
  return most
}

/** The most entries announced and not yet ended at once. */
export function mostAnnounced (wire: Wire): number {
  const live = new Set<unknown>()
  let most = 0
  for (const event of wire.events) {
    if (event.dir === 'out' && 'message' in event && event.message.type === 'announce') live.add(event.message.id)
    if (event.dir === 'out' && 'message' in event && event.message.type === 'cancel') live.delete(event.message.id)
    if (event.dir === 'in' && (event.message.type === 'done' || event.message.type === 'error')) live.delete(event.message.id)
    most = Math.max(most, live.size)
  }
  return most
}

/**
 * A recorder whose writers also count `discard` (a finished entry dropped unconsumed),
 * so tests can see what became of finished entries.
 */
export function discardingRecorder (recorder: Recorder): { factory: () => [Recorder['writer'], unknown], discarded: number[] } {
  const discarded: number[] = []
  const writer: Recorder['writer'] = {
    ...recorder.writer,
    discard: (state: { record: { id: number } }) => { discarded.push(state.record.id) }
  } as Recorder['writer']
  return { factory: () => [writer, { level: 'test' }], discarded }
}

/** A line of the demo's JSON log. */
export interface LogLine { [key: string]: any, msg?: string, url?: string, file?: string, size?: number, delay?: number, total?: number, chunks?: number, reason?: string, req?: { method?: string, url?: string } }
export interface Demo {
  url: string
  logs: () => LogLine[]
  /** Waits until `fn` returns something, re-checked on every line the demo logs. */
  until: <T>(what: string, fn: () => T | undefined | false) => Promise<T>
}

async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

/** A node process a test started, its JSON log lines readable as they come. */
export interface Watched {
  child: ChildProcess
  /** Its stdout's JSON lines so far (whole lines only: a line may come in two pieces). */
  logs: () => LogLine[]
  /** Its stderr so far. */
  stderr: () => string
  /** Resolves once `fn` returns something, checked at every output and at its exit. */
  until: <T>(what: string, fn: () => T | undefined | false) => Promise<T>
}

/** Starts `node <args>` with `options`, watched as it prints (`Watched`), and stopped at teardown. */
export function watched (t: Test, args: string[], options: { cwd?: string, env: Record<string, string> }): Watched {
  const child = spawn(process.execPath, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => stop(child))
  const changes = new Changes()
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    stdout += text
    changes.changed()
  })
  child.stderr!.setEncoding('utf8').on('data', (text: string) => { stderr += text })
  child.once('exit', () => changes.changed())
  return {
    child,
    logs: () => stdout.split('\n').slice(0, -1).filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogLine),
    stderr: () => stderr,
    until: async (what, fn) => await changes.until(what, fn)
  }
}

/**
 * The demo as a user runs it (`node examples/demo.js`, which loads the built package
 * from dist/) on a free 127.0.0.1 port, with `tmp` as its temp directory; its JSON log
 * is readable as it goes. Stopped at teardown.
 */
export async function startDemo (t: Test, tmp: string): Promise<Demo> {
  const { child, logs, stderr, until } = watched(t, ['examples/demo.js'], { env: { PORT: '0', HOST: '127.0.0.1', TMPDIR: tmp } })
  const url = await until('the demo to print its URL', () => {
    if (child.exitCode !== null) throw new Error(`the demo exited (${child.exitCode}): ${stderr()}`)
    return logs().find((line) => line.url !== undefined)?.url
  })
  return { url, logs, until }
}

export { Recorder }
