// The WebSocket upload channel (PROTOCOL.md): JSON control messages and binary chunk
// frames become entry calls; acks, progress and outcomes go back to the client as JSON.
// Frames of one entry are queued and handed to it one at a time; the socket stops
// being read while `window` frames wait, so memory stays bounded whatever the client does.
import * as Type from 'typebox/type'
import { Check } from 'typebox/schema'
import { mediaType, safeBasename, type ResolvedConfig } from '../config.js'
import type { Entry } from '../entry.js'
import { ChunkTimeoutError, TooLargeError, withUploadCode, type EntryFailure } from '../errors.js'
import type { Uploads } from '../uploads.js'

export const SUBPROTOCOL = 'fastify-chunked-upload.v1'
/** uint32 entry id + uint64 offset, big-endian. */
export const HEADER_BYTES = 12
/** Control messages need room even when chunks are tiny. */
const MIN_MESSAGE_BYTES = 16 * 1024
/**
 * Chunk bytes queued for writers across every channel of the process. Past it, sockets
 * stop being read (their bytes wait in the kernel), so memory does not grow with the
 * number of sockets × their windows.
 */
const QUEUE_BUDGET = 16 * 1024 * 1024
let queuedBytes = 0
/** Channels paused for the budget, resumed once it has room again. */
const overBudget = new Set<Channel>()

function releaseBudget (bytes: number): void {
  queuedBytes -= bytes
  if (queuedBytes >= QUEUE_BUDGET / 2 || overBudget.size === 0) return
  const waiting = [...overBudget]
  overBudget.clear()
  for (const channel of waiting) channel.budgetFreed()
}

/** The largest message a route's channel accepts: its largest chunk plus the header. */
export function maxMessageBytes (configs: Iterable<ResolvedConfig>): number {
  let largest = 0
  for (const config of configs) largest = Math.max(largest, config.chunkSize)
  return Math.max(MIN_MESSAGE_BYTES, largest + HEADER_BYTES)
}

/** What the channel needs of a `ws` socket: structural, so the plugin does not depend on ws. */
export interface ChannelSocket {
  readonly readyState: number
  send (data: string): void
  pause (): void
  resume (): void
  on (event: 'message', listener: (data: Buffer, isBinary: boolean) => void): unknown
}

const OPEN = 1
const Id = Type.Integer({ minimum: 1, maximum: 0xffff_ffff })
const AnnounceSchema = Type.Object({
  type: Type.Literal('announce'),
  id: Id,
  uploadName: Type.String(),
  name: Type.String({ maxLength: 4096 }),
  size: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
  mimeType: Type.String({ maxLength: 255 }),
  lastModified: Type.Optional(Type.Number())
})
const CancelSchema = Type.Object({ type: Type.Literal('cancel'), id: Id })
type Announce = Type.Static<typeof AnnounceSchema>

/** One accepted, unfinished entry of the socket. */
interface Slot {
  readonly id: number
  readonly entry: Entry
  /** Offset the next frame must start at: bytes accepted plus bytes queued. */
  expected: number
  readonly queue: Buffer[]
  writing: boolean
  /** Frames written since the last ack. */
  unacked: number
  /** Client silence: armed only while the entry waits for the client. */
  timer: NodeJS.Timeout | undefined
}

export class Channel {
  readonly #socket: ChannelSocket
  readonly #uploads: Uploads
  readonly #window: number
  readonly #slots = new Map<number, Slot>()
  readonly #slotOf = new Map<Entry, Slot>()
  /** Ids announced but not yet answered, and those the client cancelled meanwhile. */
  readonly #announcing = new Set<number>()
  readonly #cancelAtStart = new Set<number>()
  /** Finished entries by id, so a later `cancel` can discard them. */
  readonly #finished = new Map<number, Entry>()
  /** Announcements are handled one at a time, so `maxEntries` counts them in order. */
  #announcements = Promise.resolve()
  /** Frames queued across all slots; the socket is paused at `window`, or when the process-wide budget is spent. */
  #queued = 0
  #paused = false
  /** One ack per this many written frames at most, and whenever an entry's queue is empty. */
  readonly #ackEvery: number

  constructor (socket: ChannelSocket, uploads: Uploads, window: number) {
    this.#socket = socket
    this.#uploads = uploads
    this.#window = window
    this.#ackEvery = Math.max(1, Math.floor(window / 4))
    uploads.onEntryReport = (entry) => this.#onReport(entry)
    socket.on('message', (data, isBinary) => {
      if (isBinary) this.#onFrame(data)
      else this.#onControl(data)
    })
  }

  #send (message: Record<string, unknown>): void {
    if (this.#socket.readyState === OPEN) this.#socket.send(JSON.stringify(message))
  }

  #refuse (code: string, message: string, extra: Record<string, unknown> = {}): void {
    this.#send({ type: 'error', ...extra, code, message })
  }

  #onControl (data: Buffer): void {
    let message: unknown
    try {
      message = JSON.parse(data.toString('utf8'))
    } catch {
      return this.#refuse('bad_message', 'A text message must be one JSON object')
    }
    if (Check(AnnounceSchema, message)) return this.#onAnnounce(message)
    if (Check(CancelSchema, message)) return this.#onCancel(message.id)
    // A readable id names the file the client got wrong (a name too long, a bad size…).
    const id = (message as { id?: unknown } | null)?.id
    this.#refuse('bad_message', 'Unknown or malformed message: see PROTOCOL.md', Check(Id, id) ? { id } : {})
  }

  #onAnnounce (message: Announce): void {
    const { id } = message
    if (this.#slots.has(id) || this.#announcing.has(id)) {
      return this.#refuse('duplicate_id', `Entry id ${id} is already in use on this socket`, { id })
    }
    this.#announcing.add(id)
    this.#finished.delete(id)
    this.#announcements = this.#announcements.then(() => this.#start(message))
  }

  async #start (message: Announce): Promise<void> {
    const { id } = message
    const config = this.#uploads.configs.get(message.uploadName)
    if (config === undefined) {
      this.#announcing.delete(id)
      const names = [...this.#uploads.configs.keys()].join(', ')
      return this.#refuse('unknown_upload', `This route accepts uploads for ${names}`, { id })
    }
    const entry = await this.#uploads.announce(config, {
      clientName: safeBasename(message.name),
      clientType: mediaType(message.mimeType),
      clientSize: message.size,
      clientLastModified: message.lastModified
    })
    try {
      await entry.start()
    } catch {
      // Refused, or the writer could not start: the entry carries its failure.
      this.#announcing.delete(id)
      this.#cancelAtStart.delete(id)
      return this.#sendFailure(id, entry)
    }
    this.#announcing.delete(id)
    const slot: Slot = { id, entry, expected: 0, queue: [], writing: false, unacked: 0, timer: undefined }
    this.#slots.set(id, slot)
    this.#slotOf.set(entry, slot)
    this.#send({ type: 'accepted', id, ref: entry.ref, chunkSize: config.chunkSize, window: this.#window })
    if (this.#cancelAtStart.delete(id)) {
      entry.cancel()
      return
    }
    // A zero-byte file is complete now; any other waits for its first chunk.
    this.#pump(slot)
  }

  #onCancel (id: number): void {
    const slot = this.#slots.get(id)
    if (slot !== undefined) {
      slot.entry.cancel()
      return
    }
    if (this.#announcing.has(id)) {
      this.#cancelAtStart.add(id)
      return
    }
    const finished = this.#finished.get(id)
    if (finished === undefined) return this.#refuse('unknown_entry', `No entry ${id} on this socket`, { id })
    this.#finished.delete(id)
    this.#uploads.cancel(finished.ref).then(() => this.#sendFailure(id, finished, 'cancelled'))
  }

  #onFrame (frame: Buffer): void {
    if (frame.length <= HEADER_BYTES) {
      const id = frame.length >= 4 ? { id: frame.readUInt32BE(0) } : {}
      return this.#refuse('bad_frame', `A chunk frame is a ${HEADER_BYTES}-byte header and at least one byte`, id)
    }
    const id = frame.readUInt32BE(0)
    const offset = frame.readUInt32BE(4) * 2 ** 32 + frame.readUInt32BE(8)
    const slot = this.#slots.get(id)
    if (slot === undefined) return this.#refuse('unknown_entry', `No entry ${id} is uploading on this socket`, { id })
    if (offset !== slot.expected) {
      return this.#refuse('bad_offset', `Entry ${id} expects offset ${slot.expected}`, { id, expected: slot.expected })
    }
    const chunk = frame.subarray(HEADER_BYTES)
    const { entry } = slot
    if (slot.expected + chunk.length > entry.clientSize!) {
      const error = withUploadCode(new TooLargeError(entry.clientName, entry.uploadName, entry.clientSize), 'too_large')
      entry.cancel(error as EntryFailure)
      return
    }
    this.#heard(slot)
    slot.expected += chunk.length
    slot.queue.push(chunk)
    this.#queued++
    queuedBytes += chunk.length
    this.#throttle()
    this.#pump(slot)
  }

  /** Stops reading the socket while its window is full or the process-wide budget is spent. */
  #throttle (): void {
    if (this.#paused) return
    if (queuedBytes >= QUEUE_BUDGET) overBudget.add(this)
    else if (this.#queued < this.#window) return
    this.#paused = true
    this.#socket.pause()
  }

  /** The budget has room again: read on, unless the window is still full. */
  budgetFreed (): void {
    this.#maybeResume()
  }

  #maybeResume (): void {
    if (this.#paused && this.#queued < this.#window && !overBudget.has(this)) {
      this.#paused = false
      this.#socket.resume()
    }
  }

  /** Hands the slot's queued frames to its entry in order, acking each; finishes at the last byte. */
  async #pump (slot: Slot): Promise<void> {
    if (slot.writing) return
    slot.writing = true
    const { entry } = slot
    try {
      while (slot.queue.length > 0) {
        const chunk = slot.queue[0]!
        await entry.write(chunk)
        slot.queue.shift()
        this.#dequeued(1, chunk.length)
        // Acks are coalesced: one covers every byte up to its offset.
        if (slot.queue.length === 0 || ++slot.unacked >= this.#ackEvery) {
          slot.unacked = 0
          this.#send({ type: 'ack', id: slot.id, offset: entry.bytesReceived, progress: entry.progress })
        }
      }
      if (entry.bytesReceived === entry.clientSize) await entry.finish()
      else this.#wait(slot)
    } catch {
      // The entry failed or was cancelled: its report told the client.
    } finally {
      slot.writing = false
    }
  }

  /** The entry waits for the client: silence from now on counts. */
  #wait (slot: Slot): void {
    const { chunkTimeout } = slot.entry.config
    slot.timer = setTimeout(() => {
      const error = withUploadCode(new ChunkTimeoutError(chunkTimeout), 'chunk_timeout')
      slot.entry.cancel(error as EntryFailure)
    }, chunkTimeout)
  }

  #heard (slot: Slot): void {
    clearTimeout(slot.timer)
    slot.timer = undefined
  }

  #dequeued (frames: number, bytes: number): void {
    this.#queued -= frames
    releaseBudget(bytes)
    this.#maybeResume()
  }

  /** The entry reached an end: tell the client, and forget its slot. */
  #onReport (entry: Entry): void {
    const slot = this.#slotOf.get(entry)
    if (slot === undefined || !entry.ended) return
    this.#heard(slot)
    this.#slots.delete(slot.id)
    this.#slotOf.delete(entry)
    let bytes = 0
    for (const chunk of slot.queue) bytes += chunk.length
    this.#dequeued(slot.queue.length, bytes)
    slot.queue.length = 0
    if (entry.status === 'done') {
      this.#finished.set(slot.id, entry)
      this.#send({ type: 'done', id: slot.id, ref: entry.ref })
    } else {
      this.#sendFailure(slot.id, entry)
    }
  }

  #sendFailure (id: number, entry: Entry, code = entry.failure!.uploadCode): void {
    const failure = entry.failure
    const error = failure?.code ?? 'FST_CHUNKED_UPLOAD_CANCELLED'
    // The client can tell a server going away from a cancel, and stop announcing.
    if (error === 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN') code = 'shutting_down'
    this.#send({ type: 'error', id, code, error, message: failure?.message ?? 'Discarded' })
  }
}
