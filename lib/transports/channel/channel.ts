// The WebSocket upload channel (PROTOCOL.md): JSON control messages and binary chunk
// frames become entry calls; acks, progress and outcomes go back to the client as JSON.
// Frames of one entry are queued and fed to it one at a time (its slot is the feed's
// source, lib/feed.ts). Memory per socket stays
// bounded whatever the client sends or leaves unread: the socket stops being read while
// `window` frames wait, while announces wait, while the instance's budget is spent, and
// while answers wait unsent; past hard limits it is closed with a coded reason.
//
// Version 2 sockets make every accepted entry a resumable upload (the registry's, shared
// with the resumable endpoint): the socket holds it while it feeds it, as a PATCH does,
// and a socket that drops saves it and lets go, so another socket (after a restart too,
// for writers that checkpoint and restore) can `resume` it from its offset.
import type { FastifyRequest } from 'fastify'
import * as Type from 'typebox/type'
import { Check } from 'typebox/schema'
import { mediaType, safeBasename, type ResolvedConfig } from '../../config.js'
import type { ClientInfo, Entry } from '../../entry.js'
import { ChunkTimeoutError, StoreFailureError, TooLargeError, TooManyFilesError, asFailure, type EntryFailure } from '../../errors.js'
import { Feed, type FeedEnd, type FeedSource } from '../../feed.js'
import type { UploadEntry } from '../../../types/index.js'
import type { Uploads } from '../../uploads.js'
import { SilenceTimer } from '../../silence.js'
import type { EndpointContext } from '../resumable/context.js'
import { finishUpload, openUpload, terminateUpload, uploadOf } from '../resumable/lifecycle.js'
import type { ResumableUpload } from '../resumable/upload.js'

export const SUBPROTOCOL_V1 = 'fastify-chunked-upload.v1'
/** Version 2: entries outlive their socket and are resumed on another (PROTOCOL.md). */
export const SUBPROTOCOL_V2 = 'fastify-chunked-upload.v2'
/** uint32 entry id + uint64 offset, big-endian. */
export const HEADER_BYTES = 12
/** Control messages need room even when chunks are tiny. */
const MIN_MESSAGE_BYTES = 16 * 1024
/**
 * Answers waiting to be sent on one socket (ws's `bufferedAmount`). From this many
 * on the socket is not read: a client that does not read its answers cannot make
 * the server queue more of them.
 */
export const ANSWERS_HIGH_WATER = 64 * 1024
/**
 * Past this many bytes of unsent answers the socket is closed (`1008 answers_not_read`).
 * Messages already read when the socket was paused may still add answers; this bounds them.
 */
export const ANSWERS_LIMIT = 1024 * 1024
/** Announces waiting for their answer on one socket: from this many on, the socket is not read. */
export const ANNOUNCE_WINDOW = 16
/** Past this many, further announces are refused with `too_many_announces`. */
export const ANNOUNCE_LIMIT = 256
/**
 * What one read of the socket can hold (Node reads 64 KiB at a time). Pausing a socket
 * stops further reads, not the messages of the read in hand: frames beyond the window
 * are kept up to this much more, which a client that ignores acks cannot exceed unless
 * compression inflates its frames.
 */
const READ_SLACK_BYTES = 64 * 1024
/**
 * Version 2: a held entry is saved (its writer's checkpoint, its record) once this many bytes
 * went through its writer since the last save, so a crash costs its client at most this
 * much sent again. A save takes about half a millisecond with the default store, a few
 * with fsync: every 16 MiB, a percent of the time at memory speed.
 */
export const SAVE_EVERY_BYTES = 16 * 1024 * 1024
/** The smallest chunk frame on the wire: a 6-byte WebSocket header, our header, one byte. */
const READ_SLACK_FRAMES = Math.ceil(READ_SLACK_BYTES / (6 + HEADER_BYTES + 1))

/**
 * Chunk bytes queued for writers across every channel socket of one plugin instance.
 * Past the limit, sockets stop being read (their bytes wait in the kernel), so memory
 * does not grow with the number of sockets × their windows. They read on once half
 * of it is free.
 */
export class ChannelBudget {
  readonly limit: number
  #used = 0
  /** Channels paused for the budget, told once it has room again. */
  readonly #waiting = new Set<Channel>()

  constructor (limit: number) {
    this.limit = limit
  }

  take (bytes: number): void {
    this.#used += bytes
  }

  release (bytes: number): void {
    this.#used -= bytes
    if (this.#used >= this.limit / 2 || this.#waiting.size === 0) return
    const waiting = [...this.#waiting]
    this.#waiting.clear()
    for (const channel of waiting) channel.budgetFreed()
  }

  /** Whether `channel` must stop reading: the budget is spent, or it still waits for room. */
  holds (channel: Channel): boolean {
    if (this.#waiting.has(channel)) return true
    if (this.#used < this.limit) return false
    this.#waiting.add(channel)
    return true
  }

  forget (channel: Channel): void {
    this.#waiting.delete(channel)
  }
}

/** The largest message a route's channel accepts: its largest chunk plus the header. */
export function maxMessageBytes (configs: Iterable<ResolvedConfig>): number {
  let largest = 0
  for (const config of configs) largest = Math.max(largest, config.chunkSize)
  return Math.max(MIN_MESSAGE_BYTES, largest + HEADER_BYTES)
}

/** What the channel needs of a `ws` socket (its public API): structural, so the plugin does not depend on ws. */
export interface ChannelSocket {
  readonly readyState: number
  /** Bytes handed to `send` and not yet written to the network. */
  readonly bufferedAmount: number
  send (data: string, done: (error?: Error) => void): void
  pause (): void
  resume (): void
  close (code: number, reason: string): void
  on (event: 'message', listener: (data: Buffer, isBinary: boolean) => void): unknown
  once (event: 'close', listener: () => void): unknown
}

export interface ChannelOptions {
  /** Chunk frames a client may have unacknowledged. */
  window: number
  /** The largest message the route's channel accepts. */
  maxMessageBytes: number
  budget: ChannelBudget
  /** Version 2: entries are resumable uploads of this route, for this owner. */
  resumable?: ChannelResume | undefined
}

/** What a version 2 socket's entries need: the route's uploads, the upgrade request, its owner. */
export interface ChannelResume {
  context: EndpointContext
  request: FastifyRequest
  owner: string | undefined
}

const OPEN = 1
/** The events of an upload set that end an entry, and all of them. */
const ENDS = ['done', 'error', 'cancel'] as const
const EVENTS = ['progress', ...ENDS] as const

/** Why a version 2 entry could not start: its entry's failure, a limit, or a store that failed (logged here). */
function failureOf (error: unknown, request: FastifyRequest): EntryFailure {
  if (error instanceof Error && 'uploadCode' in error) return asFailure(error)
  request.log.error({ err: error }, 'a channel entry could not be recorded in the upload store')
  return new StoreFailureError({ cause: error })
}
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
const ResumeSchema = Type.Object({ type: Type.Literal('resume'), id: Id, ref: Type.String({ minLength: 1, maxLength: 256 }) })
type Announce = Type.Static<typeof AnnounceSchema>

/** An announce (or, version 2, a resume) waiting for its turn: only what its entry needs. */
type PendingAnnounce =
  | { readonly id: number, readonly uploadName: string, readonly info: ClientInfo, readonly ref?: undefined }
  | { readonly id: number, readonly ref: string }

/** A channel entry's name and type, as a resumable upload's metadata keeps them (for its restore). */
function metadataOf (info: ClientInfo): string {
  const base64 = (value: string): string => Buffer.from(value, 'utf8').toString('base64')
  return `filename ${base64(info.clientName)},filetype ${base64(info.clientType)}`
}

/**
 * One accepted, unfinished entry of the socket, and the source of its feed: the frames
 * the socket brought for it, in order, handed to the feed one at a time.
 */
class Slot implements FeedSource {
  readonly id: number
  readonly entry: Entry
  /** Offset the next frame must start at: bytes accepted plus bytes queued. */
  expected = 0
  /** Frames not yet written; the first is with the writer while one is. */
  readonly queue: Buffer[] = []
  /** Frames written since the last ack. */
  unacked = 0
  readonly feed: Feed
  readonly silence: SilenceTimer
  /** Version 2: the resumable upload this slot feeds, held until `release`; `save` saves it. */
  readonly held: Held | undefined
  /** Version 2: a save under way (see SAVE_EVERY_BYTES): the next frame waits for it, and so does a last save. */
  saving: Promise<void> | undefined
  /** Bytes the writer had accepted at the last save. */
  #savedAt: number
  /** The feed waits for the next frame. */
  #waiting = false
  /** The feed is over. */
  #closed = false

  constructor (id: number, entry: Entry, silence: SilenceTimer, onWritten: (chunk: Buffer) => void, held?: Held & { onStop: (stop: () => void) => void }) {
    this.id = id
    this.entry = entry
    this.silence = silence
    this.held = held
    this.expected = this.#savedAt = entry.bytesReceived
    this.feed = new Feed(entry, { silence, onWritten, onStop: held?.onStop })
  }

  /** A frame for this entry. */
  push (chunk: Buffer): void {
    this.queue.push(chunk)
    if (!this.#waiting) return
    this.#waiting = false
    this.feed.data(chunk)
  }

  /** Frames come from the socket's messages (`push`): nothing to listen to. */
  open (): void {}

  /** The next frame to the feed; with none queued, the entry's end (every announced byte written) or a wait. */
  resume (): void {
    if (this.#closed) return
    const { bytesReceived, clientSize } = this.entry
    if (this.held !== undefined && bytesReceived - this.#savedAt >= SAVE_EVERY_BYTES && bytesReceived < clientSize!) {
      this.#savedAt = bytesReceived
      // A save that fails ends the entry: its report tells the client, and stops this feed.
      this.saving = this.held.save().catch(() => {}).then(() => {
        this.saving = undefined
        this.resume()
      })
      return
    }
    if (this.queue.length > 0) this.feed.data(this.queue[0]!)
    else if (this.entry.bytesReceived === this.entry.clientSize) this.feed.end('end')
    else this.#waiting = true
  }

  /** The feed takes frames only from `resume` and `push` while it waits: nothing to pause. */
  pause (): void {}

  close (): void {
    this.#waiting = false
    this.#closed = true
  }
}

/** A version 2 slot's hold on its resumable upload. */
interface Held {
  readonly upload: ResumableUpload
  readonly release: () => void
  readonly save: () => Promise<void>
}

export class Channel {
  readonly #socket: ChannelSocket
  readonly #uploads: Uploads
  readonly #window: number
  readonly #maxMessageBytes: number
  readonly #budget: ChannelBudget
  readonly #slots = new Map<number, Slot>()
  readonly #slotOf = new Map<UploadEntry, Slot>()
  /** Announces waiting to be started, in order: `maxEntries` counts them in order. */
  readonly #announces: PendingAnnounce[] = []
  #startingAll = false
  /** Ids announced but not yet answered, and those the client cancelled meanwhile. */
  readonly #announcing = new Set<number>()
  readonly #cancelAtStart = new Set<number>()
  /** Finished entries by id, so a later `cancel` can discard them (version 2: with their upload). */
  readonly #finished = new Map<number, Entry>()
  readonly #finishedUploads = new Map<Entry, ResumableUpload>()
  /** Version 2: what resumable entries need; entries accepted per upload name on this socket (`maxEntries`). */
  readonly #resumable: ChannelResume | undefined
  readonly #acceptedCount = new Map<string, number>()
  /** Version 2: the upload sets of entries whose writer is starting (see `shutDown`). */
  readonly #starting = new Set<Uploads>()
  /** Settles once the announces and resumes under way are started (see `idle`). */
  #started: Promise<void> = Promise.resolve()
  /** Frames and their bytes queued across all slots. */
  #queued = 0
  #queuedBytes = 0
  /** Frames written and not yet acknowledged, across all slots: with #queued, the client's window in use. */
  #unacked = 0
  /** Slots whose silence ran out while the client could not send: their silence counts again once it can. */
  readonly #deferred = new Set<Slot>()
  #paused = false
  /** Armed while answers wait unread: the client is as silent as one that sends nothing. */
  #answersTimer: NodeJS.Timeout | undefined
  readonly #answersTimeout: number
  /** The socket is closing (the channel closed it) or closed: nothing more is read or answered. */
  #closing = false
  /** One ack per this many written frames at most, and whenever an entry's queue is empty. */
  readonly #ackEvery: number

  constructor (socket: ChannelSocket, uploads: Uploads, options: ChannelOptions) {
    this.#socket = socket
    this.#uploads = uploads
    this.#window = options.window
    this.#maxMessageBytes = options.maxMessageBytes
    this.#budget = options.budget
    this.#resumable = options.resumable
    this.#ackEvery = Math.max(1, Math.floor(this.#window / 4))
    let timeout = 0
    for (const config of uploads.configs.values()) timeout = Math.max(timeout, config.chunkTimeout)
    this.#answersTimeout = timeout
    // Every end of an entry is answered to the client: the upload set's own events, heard
    // like any listener (the channel route has no handler of its own that listens too).
    for (const event of ENDS) uploads.on(event, this.#onEnd)
    socket.on('message', (data, isBinary) => {
      if (this.#closing) return
      // ws's maxPayload is per server, and applies after inflation only up to it: the
      // route's own limit is checked here, on every message, compressed or not.
      if (data.length > this.#maxMessageBytes) return this.#close(1009, `message too big: at most ${this.#maxMessageBytes} bytes`)
      if (isBinary) this.#onFrame(data)
      else this.#onControl(data)
    })
    socket.once('close', () => {
      this.#closing = true
      clearTimeout(this.#answersTimer)
      this.#budget.forget(this)
      // Version 2: every entry this socket feeds is saved and let go, for another socket to resume.
      for (const slot of this.#slots.values()) if (slot.held !== undefined) slot.feed.stop()
    })
  }

  /** Every answer goes through here: what waits unsent is watched. */
  #send (message: Record<string, unknown>): void {
    if (this.#closing || this.#socket.readyState !== OPEN) return
    this.#socket.send(JSON.stringify(message), this.#onSent)
    if (this.#socket.bufferedAmount > ANSWERS_LIMIT) return this.#close(1008, 'answers_not_read: the client does not read its answers')
    this.#flow()
  }

  /** An answer left for the network: read on if the backlog went down. */
  readonly #onSent = (): void => {
    if (!this.#closing) this.#flow()
  }

  #close (code: number, reason: string): void {
    this.#closing = true
    clearTimeout(this.#answersTimer)
    this.#socket.close(code, reason)
    // Read on, so the client's closing handshake is heard (its messages are ignored).
    this.#socket.resume()
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
    if (this.#resumable !== undefined && Check(ResumeSchema, message)) return this.#onAnnounce(message)
    // A readable id names the file the client got wrong (a name too long, a bad size…).
    const id = (message as { id?: unknown } | null)?.id
    this.#refuse('bad_message', 'Unknown or malformed message: see PROTOCOL.md', Check(Id, id) ? { id } : {})
  }

  #onAnnounce (message: Announce | Type.Static<typeof ResumeSchema>): void {
    const { id } = message
    if (this.#slots.has(id) || this.#announcing.has(id)) {
      return this.#refuse('duplicate_id', `Entry id ${id} is already in use on this socket`, { id })
    }
    if (this.#announcing.size >= ANNOUNCE_LIMIT) {
      return this.#refuse('too_many_announces', `At most ${ANNOUNCE_LIMIT} announces may wait for their answer`, { id })
    }
    this.#announcing.add(id)
    this.#finished.delete(id)
    // Only what the entry keeps: the raw name may be 4096 characters.
    this.#announces.push(message.type === 'resume'
      ? { id, ref: message.ref }
      : {
          id,
          uploadName: message.uploadName,
          info: { clientName: safeBasename(message.name), clientType: mediaType(message.mimeType), clientSize: message.size, clientLastModified: message.lastModified }
        })
    this.#flow()
    if (!this.#startingAll) this.#started = this.#startAll()
  }

  /** Starts the announced entries one at a time, in order. */
  async #startAll (): Promise<void> {
    this.#startingAll = true
    while (this.#announces.length > 0) {
      await this.#start(this.#announces.shift()!)
      this.#flow()
    }
    this.#startingAll = false
  }

  /** Resolves once no announce or resume of this socket is being started (its writer's init, a restore). */
  async idle (): Promise<void> {
    await this.#started
  }

  async #start (pending: PendingAnnounce): Promise<void> {
    if (pending.ref !== undefined) return await this.#resume(pending.id, pending.ref)
    const { id, uploadName, info } = pending
    const config = this.#uploads.configs.get(uploadName)
    if (config === undefined) {
      this.#announcing.delete(id)
      this.#cancelAtStart.delete(id)
      const names = [...this.#uploads.configs.keys()].join(', ')
      return this.#refuse('unknown_upload', `This route accepts uploads for ${names}`, { id })
    }
    if (this.#resumable !== undefined) return await this.#open(id, config, info, this.#resumable)
    const entry = await this.#uploads.announce(config, info)
    try {
      await entry.start()
    } catch {
      // Refused, or the writer could not start: the entry carries its failure. It has
      // nothing to close or discard: once the client is told, the socket forgets it.
      this.#announcing.delete(id)
      this.#cancelAtStart.delete(id)
      this.#sendFailure(id, entry)
      this.#uploads.forsake(entry)
      return
    }
    this.#announcing.delete(id)
    const { chunkTimeout } = config
    // chunkTimeout counts from `accepted`, while the entry waits for the client.
    const silence = new SilenceTimer(chunkTimeout, () => { this.#silent(slot) })
    const slot: Slot = new Slot(id, entry, silence, (chunk) => { this.#written(slot, chunk) })
    this.#slots.set(id, slot)
    this.#slotOf.set(entry, slot)
    this.#send({ type: 'accepted', id, ref: entry.ref, chunkSize: config.chunkSize, window: this.#window })
    // A zero-byte file is complete now; any other waits for its first chunk. Not awaited:
    // the next announce starts meanwhile.
    slot.feed.run(slot).then((how) => { this.#fed(slot, how, chunkTimeout) })
    // Cancelled while it started: its end stops the feed.
    if (this.#cancelAtStart.delete(id)) entry.cancel()
  }

  /**
   * Version 2: a new entry is a resumable upload of the route, checked as any announce
   * (maxEntries per socket, then accept, size, validate), its writer started and, when it
   * can checkpoint, its record made. Then this socket holds it.
   */
  async #open (id: number, config: ResolvedConfig, info: ClientInfo, { context, request, owner }: ChannelResume): Promise<void> {
    const accepted = this.#acceptedCount.get(config.uploadName) ?? 0
    let upload: ResumableUpload
    const opening: { home?: Uploads } = {}
    try {
      if (accepted >= config.maxEntries) throw new TooManyFilesError(config.uploadName, config.maxEntries)
      // Counted per socket above, and, as over tus, per owner: entries outlive their socket.
      // The registry bounds the process (maxResumableUploads).
      const slot = context.registry.reserve(owner, config, false, config.maxEntries)
      const shape = { length: info.clientSize, metadata: metadataOf(info), concat: undefined, concatHeader: undefined, hold: true }
      upload = await openUpload(context, request, config, slot, info, shape, (home) => {
        // A refusal (accept, size, validate) is an error event on the socket's uploads, as in version 1.
        home.once('error', this.#relay)
        // Starting: a shutdown stops it (its writer's init is told), and waits for it.
        opening.home = home
        this.#starting.add(home)
      })
      upload.home.off('error', this.#relay)
    } catch (error) {
      this.#announcing.delete(id)
      this.#cancelAtStart.delete(id)
      return this.#sendError(id, failureOf(error, request))
    } finally {
      if (opening.home !== undefined) this.#starting.delete(opening.home)
    }
    this.#acceptedCount.set(config.uploadName, accepted + 1)
    // Its client knows it from now on: kept, not cancelled, when the server shuts down.
    upload.announced = true
    await this.#hold(id, upload, 'accepted')
  }

  /**
   * Version 2: an entry another socket (or this one, earlier) began, continued here from
   * its offset: found in this process, or restored from the store after a restart, for
   * the same owner and route only. Finished meanwhile, it is answered `done`.
   */
  async #resume (id: number, ref: string): Promise<void> {
    const { context, request } = this.#resumable!
    let upload: ResumableUpload
    try {
      upload = await uploadOf(context, request, ref)
    } catch (error) {
      this.#announcing.delete(id)
      this.#cancelAtStart.delete(id)
      const code = (error as { code?: unknown }).code
      if (code === 'FST_CHUNKED_UPLOAD_NOT_FOUND' || code === 'FST_CHUNKED_UPLOAD_GONE') return this.#refuse('unknown_entry', `No unfinished entry ${ref} of yours on this route: announce the file again`, { id, ref })
      return this.#tryAgain(id, ref, (error as Error).message)
    }
    // A tus upload of the route whose length is not known yet, or part of a concatenation, is not the channel's to go on with.
    if (upload.length === undefined || upload.concat !== undefined) {
      this.#announcing.delete(id)
      this.#cancelAtStart.delete(id)
      return this.#refuse('unknown_entry', `Upload ${ref} cannot be continued over the channel`, { id, ref })
    }
    await this.#hold(id, upload, 'resumed')
  }

  /**
   * The entry exists but cannot be resumed here now: the process holds its most uploads,
   * another server holds it, or the store failed (`message`). Nothing is answered while the
   * server shuts down: this socket closes (1001), and its client resumes on the next one.
   */
  #tryAgain (id: number, ref: string, message: string): void {
    if (!this.#resumable!.context.registry.shuttingDown) this.#refuse('try_again', message, { id, ref })
  }

  /**
   * This socket takes the upload (a socket holding it is asked to let go: it saves and
   * releases), and feeds it the frames that follow, as a PATCH feeds its body.
   */
  async #hold (id: number, upload: ResumableUpload, answer: 'accepted' | 'resumed'): Promise<void> {
    const { context, request } = this.#resumable!
    const { release, onStop } = await upload.acquireToAppend()
    this.#announcing.delete(id)
    const cancelled = this.#cancelAtStart.delete(id)
    const { entry, config } = upload
    const listed = context.registry.find(upload.id) === upload
    if (this.#closing || !listed || upload.complete) {
      release()
      // A new entry whose client never heard its ref: nobody could resume it.
      if (answer === 'accepted' && listed) return await terminateUpload(context, upload)
      if (this.#closing) return
      // Finished by the socket that held it, while this one waited: answered as if it had finished here.
      if (listed && !cancelled) return this.#done(id, upload)
      if (listed) return await this.#discard(id, upload)
      // Let go meanwhile, not ended: to another server, or to the next process at shutdown.
      if (upload.kept) return this.#tryAgain(id, entry.ref, 'The entry is being continued elsewhere')
      return this.#refuse('unknown_entry', `Entry ${entry.ref} ended`, { id, ref: entry.ref })
    }
    entry.carriedBy(request)
    const held = {
      upload,
      onStop,
      release: () => {
        entry.carriedBy(undefined)
        release()
      },
      save: async () => await context.registry.save(upload)
    }
    // chunkTimeout counts from the answer, while the entry waits for the client.
    const silence = new SilenceTimer(config.chunkTimeout, () => { this.#silent(slot) })
    const slot: Slot = new Slot(id, entry, silence, (chunk) => { this.#written(slot, chunk) }, held)
    this.#slots.set(id, slot)
    this.#slotOf.set(entry, slot)
    // Listed on the socket's request.uploads too: its events heard there, consumable or cancellable there.
    this.#uploads.include(entry)
    for (const event of EVENTS) upload.home.on(event, this.#relay)
    for (const event of ENDS) upload.home.on(event, this.#onEnd)
    // Consumed or discarded through the socket's uploads: its URL and its place among the limits go too.
    entry.onRelease ??= (consumed) => context.registry.remove(upload, consumed ? 'consumed' : 'unclaimed')
    const offset = answer === 'resumed' ? { offset: entry.bytesReceived } : {}
    this.#send({ type: answer, id, ref: entry.ref, ...offset, chunkSize: config.chunkSize, window: this.#window })
    slot.feed.run(slot).then((how) => this.#fedHeld(slot, how, config.chunkTimeout))
    if (cancelled) terminateUpload(context, upload).catch(() => {})
  }

  /**
   * How a held entry's feed ended. Its last byte finishes it; silence (chunkTimeout), or
   * a stop (another socket resumed it, this one dropped, shutdown), saves what the writer
   * accepted before letting go. The hold is released in every case.
   */
  async #fedHeld (slot: Slot, how: FeedEnd, chunkTimeout: number): Promise<void> {
    const { upload, release } = slot.held!
    const { context } = this.#resumable!
    slot.silence.stop()
    // Writer calls never overlap: a save under way ends first.
    await slot.saving
    try {
      if (how === 'end' && upload.ended === undefined) await finishUpload(context, upload)
      else if (how === 'stopped' || how === 'timeout') await context.registry.save(upload)
    } catch {
      // The entry ended: its own report tells the client.
    } finally {
      release()
    }
    // Stopped and let go while the entry goes on (still listed, or kept for another
    // holder): this socket no longer feeds it, and if still open hears it goes on
    // elsewhere, unless the server is shutting down (the socket closes with 1001; its
    // client resumes later). Any other end is the entry's, which its report tells.
    if ((how !== 'stopped' && how !== 'timeout') || this.#slotOf.get(upload.entry) !== slot || (upload.ended !== undefined && !upload.kept)) return
    this.#removeSlot(slot)
    if (how === 'timeout') {
      // A silent client (asleep, say) does not lose what it sent: it resumes the entry when it can.
      this.#send({ type: 'error', id: slot.id, ref: upload.id, code: 'chunk_timeout', error: 'FST_CHUNKED_UPLOAD_CHUNK_TIMEOUT', message: `No bytes arrived for ${chunkTimeout} ms: the entry was saved and let go; resume it to go on` })
    } else if (!context.registry.shuttingDown) {
      this.#send({ type: 'error', id: slot.id, ref: upload.id, code: 'resumed_elsewhere', error: 'FST_CHUNKED_UPLOAD_MOVED', message: 'Another socket resumed this entry: it goes on there' })
    }
  }

  /**
   * Shutdown, version 2: the entries this socket feeds whose writer cannot checkpoint end
   * now, told why (`shutting_down`); the others are saved as the socket closes, and kept.
   */
  async shutDown (reason: EntryFailure): Promise<void> {
    // Whose writer is starting: stopped (its init told), and answered shutting_down.
    for (const home of this.#starting) home.abort(reason).catch(() => {})
    const ending = [...this.#slots.values()].filter((slot) => slot.held !== undefined && !slot.held.upload.durable)
    await Promise.all(ending.map(async ({ held }) => {
      this.#resumable!.context.registry.remove(held!.upload, 'shut down')
      await held!.upload.entry.cancel(reason)
    }))
  }

  /** A finished version 2 entry the client cancelled: discarded, and answered `cancelled`. */
  async #discard (id: number, upload: ResumableUpload): Promise<void> {
    await terminateUpload(this.#resumable!.context, upload)
    this.#sendFailure(id, upload.entry, 'cancelled')
  }

  /** A finished version 2 entry, answered `done` (a later `cancel` discards it). */
  #done (id: number, upload: ResumableUpload): void {
    this.#forgetReleased()
    this.#finished.set(id, upload.entry)
    this.#finishedUploads.set(upload.entry, upload)
    this.#send({ type: 'done', id, ref: upload.id })
  }

  #onCancel (id: number): void {
    const slot = this.#slots.get(id)
    if (slot !== undefined) {
      if (slot.held !== undefined) terminateUpload(this.#resumable!.context, slot.held.upload).catch(() => {})
      else slot.entry.cancel()
      return
    }
    if (this.#announcing.has(id)) {
      this.#cancelAtStart.add(id)
      return
    }
    const finished = this.#finished.get(id)
    this.#finished.delete(id)
    // Claimed by a request, or expired: no longer this socket's.
    if (finished === undefined || finished.released) return this.#refuse('unknown_entry', `No entry ${id} on this socket`, { id })
    const upload = this.#finishedUploads.get(finished)
    this.#finishedUploads.delete(finished)
    if (upload !== undefined) this.#discard(id, upload).catch(() => {})
    else this.#uploads.cancel(finished.ref).then(() => this.#sendFailure(id, finished, 'cancelled'))
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
      const error = new TooLargeError(entry.clientName, entry.uploadName, entry.clientSize!)
      entry.cancel(error)
      return
    }
    // Frames a paused socket still delivers (the rest of the read in hand) are kept, but
    // only what one read can hold: more means inflated frames, never a polite client.
    if (this.#queued >= this.#window + READ_SLACK_FRAMES || this.#queuedBytes >= this.#window * this.#maxMessageBytes + READ_SLACK_BYTES) {
      return this.#close(1008, `window_exceeded: at most ${this.#window} unacknowledged frames`)
    }
    slot.expected += chunk.length
    this.#queued++
    this.#queuedBytes += chunk.length
    this.#budget.take(chunk.length)
    this.#flow()
    slot.push(chunk)
  }

  /**
   * Reads the socket only while every bound has room: its window of frames, the
   * instance's budget, its announces, and the answers the client has not read yet.
   */
  #flow (): void {
    const backlog = this.#socket.bufferedAmount >= ANSWERS_HIGH_WATER
    if (!backlog) {
      clearTimeout(this.#answersTimer)
      this.#answersTimer = undefined
    } else if (this.#answersTimer === undefined) {
      this.#answersTimer = setTimeout(() => this.#close(1008, 'answers_not_read: the client does not read its answers'), this.#answersTimeout)
    }
    const stop = backlog || this.#queued >= this.#window || this.#announcing.size >= ANNOUNCE_WINDOW || this.#budget.holds(this)
    if (stop !== this.#paused) {
      this.#paused = stop
      if (stop) this.#socket.pause()
      else this.#socket.resume()
    }
    if (this.#deferred.size > 0 && !this.#holdsClient()) {
      for (const slot of this.#deferred) slot.silence.heard()
      this.#deferred.clear()
    }
  }

  /**
   * Whether the client cannot send now, so its silence is not its own: the socket is not
   * read, or its window is full of frames the writers have not taken (or not acknowledged).
   */
  #holdsClient (): boolean {
    return this.#paused || this.#queued + this.#unacked >= this.#window
  }

  /** The budget has room again: read on, unless another bound is still reached. */
  budgetFreed (): void {
    if (!this.#closing) this.#flow()
  }

  /** A frame went through its write: out of the queue, and acknowledged (coalesced: one ack covers every byte up to its offset). */
  #written (slot: Slot, chunk: Buffer): void {
    // Bytes are activity: a resumable entry does not expire while a socket feeds it.
    slot.held?.upload.touch()
    slot.queue.shift()
    slot.unacked++
    this.#unacked++
    this.#dequeued(1, chunk.length)
    if (slot.queue.length === 0 || slot.unacked >= this.#ackEvery) {
      this.#unacked -= slot.unacked
      slot.unacked = 0
      const { entry } = slot
      this.#send({ type: 'ack', id: slot.id, offset: entry.bytesReceived, progress: entry.progress })
    }
  }

  /**
   * The entry was silent for its chunkTimeout while it waited for the client. If the
   * client could not send (its window is held by writers), that was not its silence:
   * it counts again once the client can send.
   */
  #silent (slot: Slot): void {
    if (this.#holdsClient()) this.#deferred.add(slot)
    else slot.feed.end('timeout')
  }

  /** How the entry's feed ended: its last byte finishes it, silence cancels it. Any other end was the entry's own, and its report told the client. */
  #fed (slot: Slot, how: FeedEnd, chunkTimeout: number): void {
    // Nothing more to wait for: what follows is the writer's time.
    slot.silence.stop()
    if (how === 'end') slot.entry.finish().catch(() => {})
    else if (how === 'timeout') slot.entry.cancel(new ChunkTimeoutError(chunkTimeout))
  }

  #dequeued (frames: number, bytes: number): void {
    this.#queued -= frames
    this.#queuedBytes -= bytes
    this.#budget.release(bytes)
    if (!this.#closing) this.#flow()
  }

  /** An event of a held entry, told to the socket's request.uploads. */
  readonly #relay = (entry: Entry): void => { this.#uploads.relay(entry) }

  /** The entry reached an end: tell the client, and forget its slot. */
  readonly #onEnd = (ended: UploadEntry): void => {
    const slot = this.#slotOf.get(ended)
    if (slot === undefined) return
    const { entry } = slot
    this.#removeSlot(slot)
    this.#forgetReleased()
    if (entry.status === 'done') {
      if (slot.held !== undefined) return this.#done(slot.id, slot.held.upload)
      this.#finished.set(slot.id, entry)
      this.#send({ type: 'done', id: slot.id, ref: entry.ref })
    } else {
      // A resumable entry that failed (its writer, too many bytes) is over for its URL too.
      if (slot.held !== undefined) this.#resumable!.context.registry.remove(slot.held.upload, entry.status === 'cancelled' ? 'terminated' : 'failed')
      this.#sendFailure(slot.id, entry)
    }
  }

  /** Finished entries claimed or expired since are no longer this socket's to cancel. */
  #forgetReleased (): void {
    for (const [id, finished] of this.#finished) {
      if (!finished.released) continue
      this.#finished.delete(id)
      this.#finishedUploads.delete(finished)
    }
  }

  /** The socket no longer feeds the slot's entry: its feed stops, and its frames in the window are the client's again. */
  #removeSlot (slot: Slot): void {
    slot.silence.stop()
    slot.feed.stop()
    this.#deferred.delete(slot)
    this.#slots.delete(slot.id)
    this.#slotOf.delete(slot.entry)
    if (slot.held !== undefined) {
      const { home } = slot.held.upload
      for (const event of EVENTS) home.off(event, this.#relay)
      for (const event of ENDS) home.off(event, this.#onEnd)
      // Let go unfinished (another socket goes on with it): no longer this socket's to list.
      if (!slot.entry.ended) this.#uploads.forsake(slot.entry)
    }
    this.#unacked -= slot.unacked
    let bytes = 0
    for (const chunk of slot.queue) bytes += chunk.length
    this.#dequeued(slot.queue.length, bytes)
    slot.queue.length = 0
  }

  #sendFailure (id: number, entry: Entry, code = entry.failure!.uploadCode): void {
    this.#sendError(id, entry.failure, code)
  }

  #sendError (id: number, failure: EntryFailure | undefined, code = failure!.uploadCode): void {
    const error = failure?.code ?? 'FST_CHUNKED_UPLOAD_CANCELLED'
    // The client can tell a server going away from a cancel, and stop announcing.
    if (error === 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN') code = 'shutting_down'
    this.#send({ type: 'error', id, code, error, message: failure?.message ?? 'Discarded' })
  }
}
