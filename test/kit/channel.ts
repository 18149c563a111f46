// The channel's test kit: an app with @fastify/websocket, and a protocol client that
// speaks PROTOCOL.md frame by frame (not the client library: tests of the server must
// be able to send what a polite client never would).
import websocket, { type WebsocketPluginOptions } from '@fastify/websocket'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import WebSocket from 'ws'
import chunkedUpload, { type ChunkedUploadOptions } from '../../lib/index.js'
import { Changes, listen, PATIENCE_MS, tmpDirFor } from './index.js'

export const SUBPROTOCOL = 'fastify-chunked-upload.v1'
/** Version 2: entries outlive their socket (`resume`). */
export const SUBPROTOCOL_V2 = 'fastify-chunked-upload.v2'

export interface ChannelApp { app: FastifyInstance, url: string, wsUrl: string, port: number }

/** The plugin with `channel: true`, registered before @fastify/websocket (so shutdown says 1001). */
export async function startChannelApp (
  t: Test, routes: (app: FastifyInstance) => void, options: ChunkedUploadOptions = {}, websocketOptions: WebsocketPluginOptions = {}, fastifyOptions: FastifyServerOptions = {}
): Promise<ChannelApp> {
  const app = Fastify(fastifyOptions)
  // Each app its own tmpDir: the default store's directory is claimed by one at a time.
  const tmpDir = options.tmpDir ?? (options.store === undefined ? await tmpDirFor(t) : undefined)
  await app.register(chunkedUpload, { channel: true, ...options, tmpDir })
  await app.register(websocket, websocketOptions)
  app.get('/health', async () => ({ ok: true }))
  routes(app)
  const started = await listen(t, app)
  return { ...started, wsUrl: started.url.replace('http:', 'ws:') }
}

export type ServerMessage = Record<string, any> & { type: string }

/** One chunk frame: uint32 id, uint64 offset (big-endian), data. */
export function frame (id: number, offset: number, data: Buffer): Buffer {
  const head = Buffer.allocUnsafe(12)
  head.writeUInt32BE(id, 0)
  head.writeUInt32BE(Math.floor(offset / 2 ** 32), 4)
  head.writeUInt32BE(offset % 2 ** 32, 8)
  return Buffer.concat([head, data])
}

export interface AnnounceOptions { uploadName?: string, name?: string, size: number, mimeType?: string, lastModified?: number }

export class ProtocolClient {
  readonly socket: WebSocket
  readonly messages: ServerMessage[] = []
  readonly closed: Promise<{ code: number, reason: string }>
  readonly opened: Promise<void>
  /** The socket closed: nothing more will arrive. */
  isClosed = false
  /** Changed on every message and at close (see `until`). */
  readonly #changes = new Changes()

  constructor (url: string, protocols: string[] = [SUBPROTOCOL], headers: Record<string, string> = {}, options: WebSocket.ClientOptions = {}) {
    this.socket = new WebSocket(url, protocols, { headers, ...options })
    this.socket.on('message', (data, isBinary) => {
      if (!isBinary) this.messages.push(JSON.parse(data.toString()))
      this.#changes.changed()
    })
    this.socket.on('error', () => {})
    this.closed = new Promise((resolve) => this.socket.once('close', (code, reason) => {
      this.isClosed = true
      this.#changes.changed()
      resolve({ code, reason: reason.toString() })
    }))
    this.opened = new Promise((resolve, reject) => {
      this.socket.once('open', () => resolve())
      this.socket.once('unexpected-response', (_req, res) => reject(new Error(`status ${String(res.statusCode)}`)))
      this.socket.once('error', reject)
    })
  }

  static async open (url: string, protocols?: string[], headers?: Record<string, string>, options?: WebSocket.ClientOptions): Promise<ProtocolClient> {
    const client = new ProtocolClient(url, protocols, headers, options)
    await client.opened
    return client
  }

  /**
   * Resolves once `holds()` is true, checked now, on every message and at close: an
   * event, not a poll. Fails after `ms`, a bound on what must happen, never an ordering.
   */
  async until (holds: () => boolean, ms = PATIENCE_MS): Promise<void> {
    await this.#changes.until('a message or the close', holds, ms)
  }

  json (message: unknown): void {
    this.socket.send(JSON.stringify(message))
  }

  announce (id: number, options: AnnounceOptions): void {
    this.json({ type: 'announce', id, uploadName: 'file', name: `f${id}.bin`, mimeType: '', ...options })
  }

  chunk (id: number, offset: number, data: Buffer): void {
    this.socket.send(frame(id, offset, data))
  }

  /** The first message (from `from` on) that matches, as it arrives. */
  async waitFor (match: (m: ServerMessage) => boolean, ms = PATIENCE_MS, from = 0): Promise<ServerMessage> {
    let seen = from
    try {
      return await this.#changes.until('a matching message', () => {
        // Only the messages not looked at yet.
        for (; seen < this.messages.length; seen++) if (match(this.messages[seen]!)) return this.messages[seen]
        return undefined
      }, ms)
    } catch (error) {
      throw new Error(`${(error as Error).message}; the last messages: ${JSON.stringify(this.messages.slice(-5))}`)
    }
  }

  async accepted (id: number): Promise<ServerMessage> {
    const answer = await this.waitFor((m) => m.id === id && (m.type === 'accepted' || m.type === 'error'))
    if (answer.type !== 'accepted') throw new Error(`entry ${id} refused: ${JSON.stringify(answer)}`)
    return answer
  }

  /** The entry's end: `done` or `error`. */
  async outcome (id: number, ms?: number): Promise<ServerMessage> {
    return await this.waitFor((m) => m.id === id && (m.type === 'done' || (m.type === 'error' && isEnd(m.code))), ms)
  }

  /**
   * Sends `data` as entry `id` (from byte `from` on) in chunks of the accepted size, keeping
   * at most `window` frames unacknowledged (the polite client). Resolves when every frame was sent.
   */
  async send (id: number, data: Buffer, accepted: ServerMessage, from = 0): Promise<void> {
    const { chunkSize, window } = accepted as unknown as { chunkSize: number, window: number }
    // From a resumed offset: what came before counts as acknowledged.
    let sent = Math.ceil(from / chunkSize)
    let offset = from
    while (offset < data.length) {
      // Acks are coalesced: the last one's offset says how many frames are acknowledged.
      const acked = Math.ceil(Math.max(from, this.ackedOffset(id)) / chunkSize)
      if (sent - acked >= window) {
        await this.until(() => this.ackedOffset(id) > acked * chunkSize || this.messages.some((m) => m.id === id && m.type === 'error'))
        if (this.messages.some((m) => m.id === id && m.type === 'error')) return
        continue
      }
      const piece = data.subarray(offset, offset + chunkSize)
      this.chunk(id, offset, piece)
      offset += piece.length
      sent++
    }
  }

  /** The offset of the entry's last ack (0 before the first). */
  ackedOffset (id: number): number {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      const m = this.messages[i]!
      if (m.type === 'ack' && m.id === id) return m.offset as number
    }
    return 0
  }

  /** Announces, waits for `accepted`, sends every byte, and returns the entry's outcome. */
  async upload (id: number, data: Buffer, options: Partial<AnnounceOptions> = {}): Promise<ServerMessage> {
    this.announce(id, { size: data.length, ...options })
    const accepted = await this.accepted(id)
    await this.send(id, data, accepted)
    return await this.outcome(id)
  }

  close (): void {
    this.socket.close()
  }
}

/** Codes of refused messages: they leave the entry as it was. */
const REFUSALS = new Set(['unknown_entry', 'bad_offset', 'bad_frame', 'bad_message', 'duplicate_id', 'resumed_elsewhere'])
export function isEnd (code: string): boolean {
  return !REFUSALS.has(code)
}
