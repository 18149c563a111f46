// Resumable HTTP uploads: tus 1.0 (creation, creation-with-upload, creation-defer-length,
// termination, expiration, checksum, concatenation) and the IETF "Resumable Uploads for
// HTTP" draft (interop versions 5 to 8), on one endpoint per upload route. Each upload
// is one entry that lives across requests; its offset is always the bytes its writer
// accepted.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { Http2ServerRequest } from 'node:http2'
import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { UploadWriter } from '../../types/index.js'
import { chooseConfig, mediaType, parseAccept, safeBasename, type OwnerFn, type ResolvedConfig } from '../config.js'
import type { Entry } from '../entry.js'
import {
  BadConcatError, ChecksumBodyTooLargeError, ChecksumMismatchError, ChunkTimeoutError, ConcatReadError, FinalUploadError, MethodNotAllowedError, OffsetMismatchError,
  PastLengthError, ResumableMediaTypeError, ResumableVersionError, ShuttingDownError, TooLargeError, TooManyFilesError, TooManyUploadsError,
  UploadCompletedError, UploadGoneError, UploadLengthError, UploadNotFoundError, asFailure
} from '../errors.js'
import type { ForsakeReason, RefStore } from '../refs.js'
import { Uploads } from '../uploads.js'
import {
  CHECKSUM_ALGORITHMS, INTEROP_VERSIONS, TUS_VERSION, booleanHeader, checksumHeader, concatHeader, idOfUrl, integerHeader,
  metadataHeader, type Checksum
} from './resumable-headers.js'
import { ResumableUpload, append, type AppendEnd, type GoneReason, type Slot } from './resumable-upload.js'
import { closeAfterAnswer } from './close-after-answer.js'
import { hasBody } from './http-body.js'

const TUS_EXTENSIONS = 'creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,concatenation'
const TUS_CONTENT_TYPE = 'application/offset+octet-stream'
const IETF_CONTENT_TYPE = 'application/partial-upload'
/** An append with Upload-Checksum is held in memory until its digest is checked. */
export const CHECKSUM_BODY_LIMIT = 16 * 1024 * 1024
/** Partial uploads (for concatenation) an owner may hold per upload name, per `maxEntries`. */
const PARTIALS_PER_ENTRY = 16
/** Ids of uploads that ended, remembered so later requests get 410 rather than 404. */
const GONE_MEMORY = 10_000
/** Methods each URL serves (X-HTTP-Method-Override names the method); others get 405 with Allow. */
const ENDPOINT_METHODS = ['OPTIONS', 'POST']
const UPLOAD_METHODS = ['OPTIONS', 'HEAD', 'PATCH', 'DELETE']
/** What a 410 says, in words, for each way an upload ends. */
const GONE_WORDS: Record<Exclude<GoneReason, 'shut down'>, string> = {
  terminated: 'it was terminated (DELETE)',
  expired: 'it expired (no request within resumableExpiry, or past resumableMaxLifetime)',
  unclaimed: 'it was complete, but no request claimed it within entryTtl',
  failed: 'its writer failed',
  consumed: 'it was consumed by a request to its route',
  concatenated: 'it was concatenated into a final upload'
}
/** Headers a browser page may read from our answers (CORS). */
export const EXPOSED_HEADERS = [
  'Location', 'Upload-Offset', 'Upload-Length', 'Upload-Defer-Length', 'Upload-Metadata', 'Upload-Expires', 'Upload-Concat',
  'Tus-Resumable', 'Tus-Version', 'Tus-Extension', 'Tus-Max-Size', 'Tus-Checksum-Algorithm',
  'Upload-Complete', 'Upload-Limit', 'Upload-Draft-Interop-Version'
].join(', ')

export interface ResumableSettings {
  refs: RefStore
  owner: OwnerFn
  expiry: number
  maxLifetime: number
  /** Where partial uploads are staged until their final upload concatenates them. */
  staging: UploadWriter
  stagingOptions: unknown
}

/** The request's dialect: tus 1.0, or an interop version of the IETF draft. */
type Dialect = { ietf: false } | { ietf: true, version: string }

/** An upload's own upload set: told when a request claims its entry, or its ref expires. */
class UploadHome extends Uploads {
  onForsake: ((why: ForsakeReason | undefined) => void) | undefined
  override forsake (entry: Entry, why?: ForsakeReason): void {
    super.forsake(entry)
    this.onForsake?.(why)
  }
}

/** The error a request gets for an upload that ended: 410 saying why in words (503 at shutdown). */
export function goneError (reason: GoneReason | undefined): Error {
  if (reason === 'shut down') return new ShuttingDownError()
  // Forgotten (past GONE_MEMORY) while a request still held it: it ended, we no longer know how.
  return new UploadGoneError(reason === undefined ? 'it ended' : GONE_WORDS[reason])
}

/**
 * Every resumable upload of the plugin, by id, the ids of recent ended ones, and the
 * slots uploads take among the limits: per owner (maxEntries) and per process (maxUploads).
 */
export class ResumableRegistry {
  readonly #uploads = new Map<string, ResumableUpload>()
  readonly #gone = new Map<string, GoneReason>()
  /** Slots of live uploads and of creations still starting their writer. */
  readonly #slots = new Set<Slot>()
  readonly #maxUploads: number
  #closed = false

  constructor (maxUploads: number) {
    this.#maxUploads = maxUploads
  }

  /**
   * Takes a slot for a new upload, synchronously (before its creation awaits anything),
   * or throws: 503 past maxUploads; 413 past `cap` uploads of this owner for this upload
   * name. An anonymous owner (undefined) is everyone without an owner: one of them must
   * not lock the others out, so only maxUploads bounds them.
   */
  reserve (owner: string | undefined, config: ResolvedConfig, partial: boolean, cap: number): Slot {
    if (this.#closed) throw new ShuttingDownError()
    if (this.#slots.size >= this.#maxUploads) throw new TooManyUploadsError(this.#maxUploads)
    if (owner !== undefined) {
      let count = 0
      for (const slot of this.#slots) if (slot.owner === owner && slot.config.key === config.key && slot.partial === partial) count++
      if (count >= cap) throw new TooManyFilesError(config.uploadName, cap)
    }
    const slot: Slot = { owner, config, partial }
    this.#slots.add(slot)
    return slot
  }

  /** A creation that failed before its upload was added gives its slot back. */
  release (slot: Slot): void {
    this.#slots.delete(slot)
  }

  /** Adds a created upload; after shutdown began, throws (its creator ends it). */
  add (upload: ResumableUpload): void {
    if (this.#closed) throw new ShuttingDownError()
    this.#uploads.set(upload.id, upload)
  }

  find (id: string): ResumableUpload | GoneReason | undefined {
    return this.#uploads.get(id) ?? this.#gone.get(id)
  }

  /** The upload ended: its slot is free, its id answers why, and whoever writes to it stops. */
  /** Ends an upload's registration; with a reason, later requests to its URL get 410 saying it, else 404. */
  remove (upload: ResumableUpload, reason: GoneReason | undefined): void {
    if (this.#uploads.get(upload.id) !== upload) return
    upload.stopTimers()
    this.#uploads.delete(upload.id)
    this.#slots.delete(upload.slot)
    if (reason !== undefined) this.#gone.set(upload.id, reason)
    if (this.#gone.size > GONE_MEMORY) this.#gone.delete(this.#gone.keys().next().value!)
    upload.interrupt()
  }

  /**
   * Shutdown: no new upload; appends in flight stop and answer 503; unfinished uploads
   * are cancelled, staged partials removed.
   */
  async shutdown (): Promise<void> {
    this.#closed = true
    const failure = new ShuttingDownError()
    await Promise.all([...this.#uploads.values()].map(async (upload) => {
      this.remove(upload, 'shut down')
      if (upload.complete && upload.concat === 'partial') await upload.discard()
      else await upload.entry.cancel(failure)
    }))
  }
}

/** The handlers of one route's resumable endpoint. */
export class ResumableEndpoint {
  readonly #configs: ReadonlyMap<string, ResolvedConfig>
  readonly #registry: ResumableRegistry
  readonly #settings: ResumableSettings

  constructor (configs: ReadonlyMap<string, ResolvedConfig>, registry: ResumableRegistry, settings: ResumableSettings) {
    this.#configs = configs
    this.#registry = registry
    this.#settings = settings
  }

  get maxSize (): number {
    let max = 0
    for (const config of this.#configs.values()) max = Math.max(max, config.maxFileSize)
    return max
  }

  /**
   * Any request to the endpoint URL, by its method: X-HTTP-Method-Override when present
   * (tus 1.0: it MUST be interpreted as the method, the actual one ignored).
   */
  async endpoint (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const method = methodOf(request)
    if (method === 'OPTIONS') return await this.#options(request, reply)
    if (method === 'POST') return await this.#create(request, reply)
    throw notAllowed(method, ENDPOINT_METHODS, reply)
  }

  /** Any request to an upload URL, by its method (as for the endpoint). */
  async upload (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const method = methodOf(request)
    if (method === 'OPTIONS') return await this.#options(request, reply)
    if (!UPLOAD_METHODS.includes(method)) throw notAllowed(method, UPLOAD_METHODS, reply)
    const dialect = dialectOf(request, reply)
    const upload = await this.#find(request)
    if (method === 'HEAD') return await this.#head(upload, reply, dialect)
    if (method === 'DELETE') return await this.#terminate(upload, reply)
    await this.#append(upload, request, reply, dialect, 204)
  }

  /** OPTIONS: what this endpoint supports; the draft's Upload-Limit only to a client that speaks it. */
  async #options (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    reply.code(204).headers({
      'tus-version': TUS_VERSION,
      'tus-extension': TUS_EXTENSIONS,
      'tus-max-size': this.maxSize,
      'tus-checksum-algorithm': [...CHECKSUM_ALGORITHMS].join(','),
      'accept-patch': `${IETF_CONTENT_TYPE}, ${TUS_CONTENT_TYPE}`
    })
    if (request.headers['upload-draft-interop-version'] !== undefined) reply.header('upload-limit', `max-size=${this.maxSize}`)
    await reply.send()
  }

  /** A creation: a new upload, or the final upload of a concatenation. */
  async #create (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const dialect = dialectOf(request, reply)
    const config = chooseConfig(this.#configs, request.query)
    const concat = concatHeader(request.headers)
    if (concat?.kind === 'final') return await this.#createFinal(request, reply, dialect, config, concat.parts)
    const partial = concat?.kind === 'partial'
    const { headers } = request
    const complete = dialect.ietf ? booleanHeader(headers, 'upload-complete') : undefined
    let length = integerHeader(headers, 'upload-length')
    const deferred = headers['upload-defer-length']
    if (dialect.ietf) {
      // Without Upload-Length, a request that says it is complete carries the whole upload:
      // its Content-Length, nothing, or (chunked) whatever arrives before its end.
      if (length === undefined && complete === true) length = hasBody(request) ? integerHeader(headers, 'content-length') : 0
    } else if (deferred !== undefined) {
      if (deferred !== '1') throw new UploadLengthError('Upload-Defer-Length must be 1')
      if (length !== undefined) throw new UploadLengthError('Send Upload-Length or Upload-Defer-Length, not both')
    } else if (length === undefined) {
      throw new UploadLengthError('A creation needs Upload-Length or Upload-Defer-Length: 1')
    }
    const metadata = metadataHeader(headers)
    const values = metadata?.values
    const clientName = safeBasename(values?.get('filename') ?? values?.get('name'))
    if (length !== undefined && length > config.maxFileSize) throw this.#tooLarge(reply, dialect, config, '', clientName)
    const owner = await this.#settings.owner(request)
    // The slot is taken now, before any await: concurrent creations cannot pass the limits together.
    const slot = this.#registry.reserve(owner, config, partial, partial ? config.maxEntries * PARTIALS_PER_ENTRY : config.maxEntries)
    const upload = await this.#open(request, partial ? this.#stagingConfig(config) : config, slot, {
      clientName,
      clientType: mediaType(values?.get('filetype') ?? values?.get('type')),
      clientSize: length
    }, { length, metadata: metadata?.raw, concat: partial ? 'partial' : undefined, concatHeader: partial ? 'partial' : undefined, hold: !partial })
    reply.header('location', `${pathOf(request)}/${upload.id}`)
    if (hasBody(request)) {
      let how: AppendEnd | undefined
      try {
        how = await this.#append(upload, request, reply, dialect, 201)
      } catch (error) {
        // Refused (its body, type, checksum…): the client never gets the upload's URL.
        reply.removeHeader('location')
        await this.#abandon(upload)
        throw error
      }
      // Cut before the answer: nobody knows this upload's URL, so nobody can resume it.
      if (how === 'aborted' || how === 'timeout') await this.#abandon(upload)
      return
    }
    if (upload.length === 0) await this.#finish(upload)
    this.#describe(upload, reply, dialect)
    await reply.code(201).send()
  }

  async #find (request: FastifyRequest): Promise<ResumableUpload> {
    const found = this.#registry.find((request.params as { id: string }).id)
    if (found === undefined) throw new UploadNotFoundError()
    if (typeof found === 'string') throw goneError(found)
    // Another owner's upload does not exist, as far as this request can tell.
    if (found.owner !== await this.#settings.owner(request) || this.#configs.get(found.config.uploadName)?.key !== found.config.key) {
      throw new UploadNotFoundError()
    }
    return found
  }

  async #head (upload: ResumableUpload, reply: FastifyReply, dialect: Dialect): Promise<void> {
    // A writer call in flight settles first (the holder is asked to stop): the offset
    // reported here is one the next append accepts.
    const release = await upload.acquire()
    release()
    this.#assertLive(upload)
    this.#describe(upload, reply, dialect)
    reply.header('cache-control', 'no-store')
    if (upload.metadata !== undefined) reply.header('upload-metadata', upload.metadata)
    if (upload.concatHeader !== undefined) reply.header('upload-concat', upload.concatHeader)
    if (upload.length === undefined) reply.header('upload-defer-length', '1')
    else reply.header('upload-length', upload.length)
    await reply.code(200).send()
  }

  /** A request that waited for the upload may find it ended meanwhile (deleted, expired…). */
  #assertLive (upload: ResumableUpload): void {
    const found = this.#registry.find(upload.id)
    if (found !== upload) throw goneError(found as GoneReason | undefined)
  }

  /** An upload whose creation failed: it ends now, with its writer. */
  async #abandon (upload: ResumableUpload): Promise<void> {
    // Nobody was told its URL: it was never there (404), rather than ended (410).
    this.#registry.remove(upload, undefined)
    if (!upload.complete) return await upload.entry.cancel()
    this.#settings.refs.forget(upload.entry)
    await upload.discard()
  }

  async #terminate (upload: ResumableUpload, reply: FastifyReply): Promise<void> {
    const release = await upload.acquire()
    try {
      this.#assertLive(upload)
      this.#registry.remove(upload, 'terminated')
      if (upload.complete) {
        this.#settings.refs.forget(upload.entry)
        await upload.discard()
      } else {
        await upload.entry.cancel()
      }
    } finally {
      release()
    }
    await reply.code(204).send()
  }

  /** An append (PATCH, or the body of a creation): bytes at the upload's offset. */
  async #append (upload: ResumableUpload, request: FastifyRequest, reply: FastifyReply, dialect: Dialect, status: 201 | 204): Promise<AppendEnd | undefined> {
    let stop: () => void = () => {}
    const release = await upload.acquire(() => stop())
    try {
      this.#assertLive(upload)
      const { headers } = request
      const body = bodyOf(request)
      if (upload.concat === 'final') throw new FinalUploadError()
      if (!appendTypeOk(mediaType(headers['content-type']), dialect) && (status === 204 || hasBody(request))) {
        throw new ResumableMediaTypeError(dialect.ietf ? IETF_CONTENT_TYPE : TUS_CONTENT_TYPE)
      }
      const offset = status === 201 ? 0 : integerHeader(headers, 'upload-offset')
      if (offset === undefined) throw new UploadLengthError('An append needs Upload-Offset')
      if (offset !== upload.offset) {
        await this.#mismatch(upload, reply, dialect, offset)
        return undefined
      }
      const contentLength = integerHeader(headers, 'content-length')
      if (upload.complete) {
        if (contentLength !== undefined && contentLength > 0) throw new UploadCompletedError()
        this.#describe(upload, reply, dialect)
        await reply.code(status).send()
        return undefined
      }
      this.#declareLength(upload, integerHeader(headers, 'upload-length'), reply, dialect)
      const complete = dialect.ietf ? booleanHeader(headers, 'upload-complete') : undefined
      if (complete === true && contentLength !== undefined) this.#declareLength(upload, offset + contentLength, reply, dialect)
      const room = (upload.length ?? upload.config.maxFileSize) - offset
      if (contentLength !== undefined && contentLength > room) throw this.#overflow(upload, reply, dialect)
      const checksum = checksumHeader(headers)
      const onStop = (fn: () => void): void => { stop = fn }
      const how = body === undefined
        ? 'end'
        : checksum !== undefined
          ? await this.#appendChecked(upload, body, checksum, room, onStop)
          : await append(upload, body, { limit: room, idle: upload.config.chunkTimeout, onStop })
      if (how === 'mismatch') throw new ChecksumMismatchError()
      // Stopped, cut, or over a limit: the rest of the body is unread, the exchange cannot go on.
      if (how !== 'end') closeAfterAnswer(reply)
      if (how === 'too large') throw new ChecksumBodyTooLargeError(CHECKSUM_BODY_LIMIT)
      if (how === 'failed') throw this.#failed(upload)
      if (how instanceof Error) {
        // A body that could not be read: the client's bad input. The upload keeps what its
        // writer accepted, and the answer says how much.
        this.#assertLive(upload)
        this.#describe(upload, reply, dialect)
        throw how
      }
      // Ended meanwhile (expired, shut down): the append was stopped; say why.
      this.#assertLive(upload)
      // However the append ended, the last byte finishes the upload.
      if (how === 'end' && complete === true) this.#declareLength(upload, upload.offset, reply, dialect)
      if (upload.length === upload.offset) await this.#finish(upload)
      if (how === 'timeout') {
        // The spec's advice: a timed-out append ends with its connection. Over HTTP/2 the
        // stream is the unit (the session carries other uploads): the client is answered
        // with the offset kept, then its stream is reset (closeAfterAnswer, above).
        if (!(request.raw instanceof Http2ServerRequest)) {
          reply.hijack()
          request.raw.destroy()
          return how
        }
        this.#describe(upload, reply, dialect)
        throw new ChunkTimeoutError(upload.config.chunkTimeout)
      }
      if (how === 'limit') throw this.#overflow(upload, reply, dialect)
      // Pre-empted or cut: answer with what was kept.
      this.#describe(upload, reply, dialect)
      await reply.code(status).send()
      return how
    } finally {
      release()
    }
  }

  /**
   * With Upload-Checksum: the body is held (idle limit and pre-emption as for any append)
   * and checked before any byte reaches the writer.
   */
  async #appendChecked (upload: ResumableUpload, body: Readable, checksum: Checksum, room: number, onStop: (stop: () => void) => void): Promise<AppendEnd | 'mismatch' | 'too large'> {
    const chunks: Buffer[] = []
    const held = async (chunk: Buffer): Promise<void> => { chunks.push(chunk) }
    const how = await append(upload, body, { limit: Math.min(room, CHECKSUM_BODY_LIMIT), idle: upload.config.chunkTimeout, onStop, sink: held })
    if (how === 'limit' && room > CHECKSUM_BODY_LIMIT) return 'too large'
    // Cut, stopped or timed out: a partial body cannot be checked, so nothing is kept.
    if (how !== 'end') return how
    const data = Buffer.concat(chunks)
    if (createHash(checksum.algorithm).update(data).digest('base64') !== checksum.digest) return 'mismatch'
    try {
      await upload.entry.write(data)
    } catch {
      return 'failed'
    }
    return 'end'
  }

  async #mismatch (upload: ResumableUpload, reply: FastifyReply, dialect: Dialect, offset: number): Promise<void> {
    reply.header('upload-offset', upload.offset)
    closeAfterAnswer(reply)
    if (!dialect.ietf) throw new OffsetMismatchError(offset, upload.offset)
    await reply.code(409).type('application/problem+json').send({
      type: 'https://iana.org/assignments/http-problem-types#mismatching-upload-offset',
      title: 'offset from request does not match offset of resource',
      'expected-offset': upload.offset,
      'provided-offset': offset
    })
  }

  #declareLength (upload: ResumableUpload, length: number | undefined, reply: FastifyReply, dialect: Dialect): void {
    if (length === undefined || length === upload.length) return
    if (upload.length !== undefined) throw new UploadLengthError('The upload length cannot change once known')
    if (length < upload.offset) throw new UploadLengthError('The upload length cannot be less than its offset')
    if (length > upload.config.maxFileSize) throw this.#tooLarge(reply, dialect, upload.config, 'close')
    upload.length = length
    upload.entry.declareSize(length)
  }

  async #finish (upload: ResumableUpload): Promise<void> {
    try {
      await upload.entry.finish()
    } catch {
      throw this.#failed(upload)
    }
    // A finished upload waits for its ref (refs' entryTtl); a partial one for its final upload.
    if (upload.concat !== 'partial') upload.stopTimers()
  }

  /**
   * The entry ended during a request: its writer failed (the upload ends now), or someone
   * else ended it (DELETE, expiry, shutdown), who removed it first, saying why.
   */
  #failed (upload: ResumableUpload): Error {
    const found = this.#registry.find(upload.id)
    if (found !== upload) return goneError(found as GoneReason | undefined)
    this.#registry.remove(upload, 'failed')
    return upload.entry.failure!
  }

  /** An append past the room it has: the declared Upload-Length, or (length unknown) maxFileSize. */
  #overflow (upload: ResumableUpload, reply: FastifyReply, dialect: Dialect): Error {
    const pastLength = upload.length === undefined ? undefined : new PastLengthError(upload.length)
    return this.#tooLarge(reply, dialect, upload.config, 'close', 'this upload', pastLength)
  }

  /** A 413: over maxFileSize, unless a more precise reason is given; the draft's Upload-Limit for its clients. */
  #tooLarge (reply: FastifyReply, dialect: Dialect, config: ResolvedConfig, connection: '' | 'close', clientName = 'this upload', reason?: Error): Error {
    if (dialect.ietf) reply.header('upload-limit', `max-size=${config.maxFileSize}`)
    if (connection === 'close') closeAfterAnswer(reply)
    return reason ?? new TooLargeError(clientName, config.uploadName, config.maxFileSize)
  }

  /** Offset, expiry and completeness, as every answer about the upload carries them. */
  #describe (upload: ResumableUpload, reply: FastifyReply, dialect: Dialect): void {
    reply.header('upload-offset', upload.offset)
    if (!upload.complete) reply.header('upload-expires', new Date(upload.expiresAt).toUTCString())
    if (dialect.ietf) {
      reply.header('upload-draft-interop-version', dialect.version)
      reply.header('upload-complete', upload.complete ? '?1' : '?0')
      reply.header('upload-limit', `max-size=${upload.config.maxFileSize}`)
    }
  }

  /** Partials are staged (they reach the route's writer through their final upload): any type, no validate. */
  #stagingConfig (config: ResolvedConfig): ResolvedConfig {
    const { staging, stagingOptions } = this.#settings
    return { ...config, accept: parseAccept('any'), validate: undefined, progress: undefined, writer: () => [staging, stagingOptions] }
  }

  /**
   * Validates and starts an entry for a new upload in the slot reserved for it, and
   * registers the upload. On any failure the slot is given back and no writer stays open.
   */
  async #open (
    request: FastifyRequest, config: ResolvedConfig, slot: Slot, info: Parameters<Uploads['announce']>[1],
    shape: { length: number | undefined, metadata: string | undefined, concat: 'partial' | 'final' | undefined, concatHeader: string | undefined, hold: boolean }
  ): Promise<ResumableUpload> {
    const home = new UploadHome(new Map([[config.uploadName, config]]), request)
    if (shape.hold) home.holdFinished(this.#settings.refs, slot.owner)
    let entry: Entry | undefined
    try {
      entry = await home.announce(config, info)
      if (entry.failure !== undefined) throw entry.failure
      await entry.start()
      const upload = new ResumableUpload({
        entry,
        config,
        owner: slot.owner,
        slot,
        ...shape,
        expiry: this.#settings.expiry,
        maxLifetime: this.#settings.maxLifetime,
        onExpire: (expired) => {
          this.#registry.remove(expired, 'expired')
          // Neither rejects: both settle once the writer is closed or the file removed.
          if (expired.complete) expired.discard()
          else expired.entry.cancel()
        }
      })
      // Claimed by a request (consumed), or its ref expired unclaimed: the upload URL is gone.
      home.onForsake = (why) => this.#registry.remove(upload, why === 'expired' ? 'unclaimed' : why === 'shut down' ? 'shut down' : 'consumed')
      try {
        this.#registry.add(upload)
      } catch (error) {
        // The server began shutting down while the writer started.
        upload.stopTimers()
        throw error
      }
      return upload
    } catch (error) {
      this.#registry.release(slot)
      await entry?.cancel(asFailure(error))
      throw error
    }
  }

  /**
   * `Upload-Concat: final;…`: the partials' bytes, in order, through the route's writer.
   * The partials are held while read (a DELETE, expiry or shutdown removes their bytes
   * after); a final that fails ends at once, its writer closed and its slot free.
   */
  async #createFinal (request: FastifyRequest, reply: FastifyReply, dialect: Dialect, config: ResolvedConfig, urls: string[]): Promise<void> {
    const owner = await this.#settings.owner(request)
    const parts = urls.map((url) => {
      const part = this.#registry.find(idOfUrl(url))
      if (typeof part !== 'object' || part.concat !== 'partial' || part.owner !== owner || part.config.key !== config.key) {
        throw new BadConcatError(`${url} is not a partial upload of this endpoint`)
      }
      if (!part.complete) throw new BadConcatError(`${url} is not complete (concatenation-unfinished is not supported)`)
      return part
    })
    const length = parts.reduce((sum, part) => sum + part.length!, 0)
    if (length > config.maxFileSize) throw this.#tooLarge(reply, dialect, config, '')
    // Slot and holds are taken before any await: nothing ends between the checks above and the reads.
    const slot = this.#registry.reserve(owner, config, false, config.maxEntries)
    const holds = [...new Set(parts)].map((part) => part.read())
    let upload: ResumableUpload
    try {
      const values = metadataHeader(request.headers)?.values
      upload = await this.#open(request, config, slot, {
        clientName: safeBasename(values?.get('filename') ?? values?.get('name')),
        clientType: mediaType(values?.get('filetype') ?? values?.get('type')),
        clientSize: length
      }, { length, metadata: request.headers['upload-metadata'] as string | undefined, concat: 'final', concatHeader: request.headers['upload-concat'] as string, hold: true })
      for (const [index, part] of parts.entries()) {
        await this.#concatenate(upload, part, urls[index]!)
      }
      await this.#finish(upload)
    } finally {
      for (const release of holds) release()
    }
    for (const part of parts) {
      this.#registry.remove(part, 'concatenated')
      // Its bytes went into the final upload: taken, not dropped.
      await part.discard(true)
    }
    reply.header('location', `${pathOf(request)}/${upload.id}`)
    this.#describe(upload, reply, dialect)
    await reply.code(201).send()
  }

  /** One partial's bytes into the final upload. A failure ends the final now, and says why. */
  async #concatenate (upload: ResumableUpload, part: ResumableUpload, url: string): Promise<void> {
    try {
      const { path } = part.entry.meta() as { path: string }
      for await (const chunk of createReadStream(path, { highWaterMark: upload.config.chunkSize })) {
        await upload.entry.write(chunk as Buffer)
      }
    } catch {
      if (upload.entry.ended || this.#registry.find(upload.id) !== upload) throw this.#failed(upload)
      // The partial's bytes could not be read (removed behind our back): the final cannot complete.
      this.#registry.remove(upload, 'failed')
      await upload.entry.cancel()
      throw new ConcatReadError(url)
    }
  }
}

/**
 * tus appends are application/offset+octet-stream; the draft's application/partial-upload,
 * except that interop version 5 (draft -03) sent none or the tus type.
 */
function appendTypeOk (type: string, dialect: Dialect): boolean {
  if (!dialect.ietf) return type === TUS_CONTENT_TYPE
  return type === IETF_CONTENT_TYPE || (dialect.version === '5' && (type === '' || type === TUS_CONTENT_TYPE))
}

function methodOf (request: FastifyRequest): string {
  const override = request.headers['x-http-method-override']
  return typeof override === 'string' ? override.trim().toUpperCase() : request.method
}

/** tus 1.0 needs `Tus-Resumable: 1.0.0`; the IETF draft an interop version we speak. Otherwise 412. */
function dialectOf (request: FastifyRequest, reply: FastifyReply): Dialect {
  const interop = request.headers['upload-draft-interop-version']
  if (typeof interop === 'string' && INTEROP_VERSIONS.has(interop.trim())) return { ietf: true, version: interop.trim() }
  if (interop === undefined && request.headers['tus-resumable'] === TUS_VERSION) return { ietf: false }
  reply.header('tus-version', TUS_VERSION)
  throw new ResumableVersionError()
}

/** 405 with Allow: the methods this URL serves. */
function notAllowed (method: string, allowed: string[], reply: FastifyReply): Error {
  reply.header('allow', allowed.join(', '))
  return new MethodNotAllowedError(JSON.stringify(method), allowed.join(', '))
}

/**
 * The request body: as our parser passed it on, or, for a method Fastify reads no body
 * of (GET with X-HTTP-Method-Override: PATCH), the request stream itself.
 */
function bodyOf (request: FastifyRequest): Readable | undefined {
  return (request.body as Readable | undefined) ?? (hasBody(request) ? request.raw : undefined)
}

/** The request's path, without its query: the endpoint (or upload) URL as the client used it. */
function pathOf (request: FastifyRequest): string {
  return request.url.split('?', 1)[0]!
}
