// What the tests of the channel's version 2 share: an app whose route answers each file's
// size and SHA-256 (its log readable), version 2 sockets, resumes, entries started, and
// gates that hold a writer call (or a hook) until the test opens them.
import { readFile } from 'node:fs/promises'
import { Writable } from 'node:stream'
import type { Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { TmpFileWriter, type ChunkedUploadOptions, type TmpFileMeta, type WriterFactory } from '../../lib/index.js'
import { ProtocolClient, SUBPROTOCOL_V2, startChannelApp, type ChannelApp, type ServerMessage } from './channel.js'
import { postJson, sha256 } from './index.js'
import { journaled } from './journal.js'

export interface Server extends ChannelApp { ws: string, logs: Array<Record<string, any>> }

/** POST /up with upload name `file` (any type, 1 MB, 10 KB chunks) and its channel; the handler answers each file's size and SHA-256. */
export async function serve (t: Test, options: ChunkedUploadOptions, writer?: WriterFactory, file: Record<string, unknown> = {}): Promise<Server> {
  const logs: Array<Record<string, any>> = []
  const stream = new Writable({ write (line, _encoding, done) { logs.push(JSON.parse(String(line))); done() } })
  const routes = (app: FastifyInstance): void => {
    app.post('/up', { allowUpload: { file: { accept: 'any', maxFileSize: 1_000_000, chunkSize: 10_000, ...(writer === undefined ? {} : { writer }), ...file } } }, async (request) => {
      return await request.uploads.consume('file', async (meta: TmpFileMeta) => ({ size: meta.size, sha256: sha256(await readFile(meta.path)) }))
    })
  }
  const app = await startChannelApp(t, routes, options, {}, { logger: { level: 'info', stream } })
  return { ...app, ws: `${app.wsUrl}/up/ws`, logs }
}

/** A version 2 socket to the app's channel. */
export async function v2 (server: Server, headers: Record<string, string> = {}): Promise<ProtocolClient> {
  return await ProtocolClient.open(server.ws, [SUBPROTOCOL_V2], headers)
}

/** The answer to a resume: `resumed`, `done` or `error`. */
export async function resume (client: ProtocolClient, id: number, ref: string, ms?: number): Promise<ServerMessage> {
  const from = client.messages.length
  client.json({ type: 'resume', id, ref })
  return await client.waitFor((m) => m.id === id && ['resumed', 'done', 'error'].includes(m.type), ms, from)
}

/** Announces `data` and sends its first `upTo` bytes, acknowledged: the accepted answer. */
export async function started (client: ProtocolClient, id: number, data: Buffer, upTo: number): Promise<ServerMessage> {
  client.announce(id, { size: data.length })
  const accepted = await client.accepted(id)
  await client.send(id, data.subarray(0, upTo), accepted)
  await client.until(() => client.ackedOffset(id) === upTo)
  return accepted
}

/** Posts a ref to the route, which consumes it. */
export async function claim (server: Server, ref: string, headers: Record<string, string> = {}): Promise<{ status: number, json: any }> {
  return await postJson(`${server.url}/up`, { file: ref }, headers)
}

/** Resolves once the server read every message the client sent so far (a message it refuses at once comes back after them). */
export async function heard (client: ProtocolClient): Promise<void> {
  const from = client.messages.length
  client.json({ type: 'heard?' })
  await client.waitFor((m) => m.type === 'error' && m.code === 'bad_message' && m.id === undefined, undefined, from)
}

export interface Gate { wait: Promise<void>, open: () => void, reached: Promise<void>, arrive: () => void }

/** A gate a writer call (or a hook) waits at (`arrive`, then `wait`) until the test opens it. */
export function gate (): Gate {
  let open!: () => void
  let arrive!: () => void
  const wait = new Promise<void>((resolve) => { open = resolve })
  const reached = new Promise<void>((resolve) => { arrive = resolve })
  return { wait, open, reached, arrive }
}

/** A journaled temp-file writer (in `dir`) whose next `writeChunk`, once `hold()` armed it, waits at the gate `hold` returned. */
export function heldWrites (journal: string[], dir: string): { writer: WriterFactory, hold: () => Gate } {
  let next: Gate | undefined
  const writer = journaled(journal, dir, {
    writeChunk: async (chunk, state) => {
      const held = next
      if (held !== undefined) {
        next = undefined
        held.arrive()
        await held.wait
      }
      return await TmpFileWriter.writeChunk(chunk, state)
    }
  })
  return { writer, hold: () => (next = gate()) }
}
