// PATCH, and the body of a creation: bytes at the upload's offset. The headers are
// parsed first (parseAppend), then checked against the upload's state, then the body
// is fed to the entry; wire.ts says how each outcome is answered.
import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import { ChecksumBodyTooLargeError, ChecksumMismatchError, FinalUploadError, UploadCompletedError, UploadLengthError } from '../../errors.js'
import { hasBody } from '../route-body.js'
import { append, type AppendEnd, type ResumableUpload } from './upload.js'
import type { EndpointContext } from './context.js'
import { parseAppend, type Append, type Checksum, type Dialect } from './headers.js'
import { finishUpload } from './lifecycle.js'
import { answerAppend, bodyUnread, describe, offsetMismatch, overflow, tooLarge } from './wire.js'

/** An append with Upload-Checksum is held in memory until its digest is checked. */
export const CHECKSUM_BODY_LIMIT = 16 * 1024 * 1024

/** What an upload's state says of an append: where its room ends, or why it cannot go on. */
interface UploadState { readonly length: number | undefined, readonly offset: number, readonly config: ResolvedConfig }

/**
 * The upload's length once `declared` (Upload-Length, or the end of a complete append) is
 * taken: undefined when nothing changes. Throws when the declaration contradicts the upload.
 */
export function newLength (upload: UploadState, declared: number | undefined): number | undefined {
  if (declared === undefined || declared === upload.length) return undefined
  if (upload.length !== undefined) throw new UploadLengthError('The upload length cannot change once known')
  if (declared < upload.offset) throw new UploadLengthError('The upload length cannot be less than its offset')
  return declared
}

/** Bytes this append may bring: up to the known length, or (length unknown) maxFileSize. */
export function roomOf (upload: UploadState): number {
  return (upload.length ?? upload.config.maxFileSize) - upload.offset
}

/**
 * An append to `upload`, answered with `status` (204 for a PATCH, 201 for a creation's
 * body). Returns how the body's feed ended, or undefined when it never started.
 */
export async function appendTo (
  context: EndpointContext, upload: ResumableUpload, request: FastifyRequest, reply: FastifyReply, dialect: Dialect, status: 201 | 204
): Promise<AppendEnd | undefined> {
  const { release, onStop } = await upload.acquireToAppend()
  // This request carries the upload's bytes (its `progress` is told) until it lets go.
  upload.entry.carriedBy(request)
  try {
    context.registry.assertLive(upload)
    if (upload.concat === 'final') throw new FinalUploadError()
    const ask = parseAppend(request.headers, dialect, status === 201, hasBody(request))
    if (ask.offset !== upload.offset) {
      await offsetMismatch(reply, dialect, upload, ask.offset)
      return undefined
    }
    if (upload.complete) {
      if (ask.contentLength !== undefined && ask.contentLength > 0) throw new UploadCompletedError()
      describe(reply, upload, dialect)
      await reply.code(status).send()
      return undefined
    }
    declareLength(upload, ask.length, reply, dialect)
    if (ask.complete === true && ask.contentLength !== undefined) declareLength(upload, ask.offset + ask.contentLength, reply, dialect)
    const room = roomOf(upload)
    if (ask.contentLength !== undefined && ask.contentLength > room) throw overflow(reply, dialect, upload)
    const how = await feed(upload, bodyOf(request), ask, room, onStop)
    if (how === 'mismatch') throw new ChecksumMismatchError()
    // Stopped, cut, or over a limit: the rest of the body is unread, the exchange cannot go on.
    if (how !== 'end') bodyUnread(reply)
    if (how === 'too large') throw new ChecksumBodyTooLargeError(CHECKSUM_BODY_LIMIT)
    if (how === 'failed') throw context.registry.endedDuring(upload)
    const received = upload.entry.bytesReceived
    if (how === 'end' && ask.complete === true) declareLength(upload, received, reply, dialect)
    // A body that could not be read keeps what its writer accepted; otherwise, however
    // the append ended, the last byte finishes the upload (unless it ended meanwhile).
    const finishing = !(how instanceof Error) && upload.length === received && upload.ended === undefined
    // Whatever else: what the writer accepted is made durable before the answer, and
    // before a request that pre-empted this one goes on.
    if (!finishing) await context.registry.save(upload)
    // Ended meanwhile (expired, shut down): the append was stopped; say why.
    context.registry.assertLive(upload)
    if (finishing) await finishUpload(context, upload)
    await answerAppend(request, reply, upload, dialect, how, status)
    return how
  } finally {
    upload.entry.carriedBy(undefined)
    release()
  }
}

/** A length the append declares (deferred until now, or implied by Upload-Complete), past maxFileSize a 413. */
function declareLength (upload: ResumableUpload, declared: number | undefined, reply: FastifyReply, dialect: Dialect): void {
  const length = newLength(upload, declared)
  if (length === undefined) return
  if (length > upload.config.maxFileSize) throw tooLarge(reply, dialect, upload.config, true)
  upload.length = length
  upload.entry.declareSize(length)
}

/** The body into the entry: straight through, or held and checked first (Upload-Checksum). */
async function feed (
  upload: ResumableUpload, body: Readable | undefined, ask: Append, room: number, onStop: (stop: () => void) => void
): Promise<AppendEnd | 'mismatch' | 'too large'> {
  if (body === undefined) return 'end'
  if (ask.checksum !== undefined) return await appendChecked(upload, body, ask.checksum, room, onStop)
  return await append(upload, body, { limit: room, idle: upload.config.chunkTimeout, onStop })
}

/**
 * With Upload-Checksum: the body is held (idle limit and pre-emption as for any append)
 * and checked before any byte reaches the writer.
 */
async function appendChecked (
  upload: ResumableUpload, body: Readable, checksum: Checksum, room: number, onStop: (stop: () => void) => void
): Promise<AppendEnd | 'mismatch' | 'too large'> {
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

/**
 * The request body: as our parser passed it on, or, for a method Fastify reads no body
 * of (GET with X-HTTP-Method-Override: PATCH), the request stream itself.
 */
function bodyOf (request: FastifyRequest): Readable | undefined {
  return (request.body as Readable | undefined) ?? (hasBody(request) ? request.raw : undefined)
}
