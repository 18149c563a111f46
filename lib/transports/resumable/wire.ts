// How the resumable endpoint's outcomes look on the wire, in tus 1.0 and in the IETF
// draft: the headers every answer about an upload carries (Upload-Offset, Upload-Expires,
// and for the draft Upload-Complete, Upload-Limit), the refusals that carry more than a
// status (413 with Upload-Limit, 409 with the offset or the draft's problem details, 412
// with Tus-Version, 405 with Allow), how an append's end is answered, and when the
// connection (over HTTP/2, the stream) closes after the answer because the body was not
// read to its end. The handlers decide; this says it.
import { Http2ServerRequest } from 'node:http2'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import {
  ChunkTimeoutError, MethodNotAllowedError, OffsetMismatchError, PastLengthError, ResumableVersionError, TooLargeError
} from '../../errors.js'
import { closeAfterAnswer } from '../close-after-answer.js'
import type { AppendEnd, ResumableUpload } from './upload.js'
import { CHECKSUM_ALGORITHMS, IETF_CONTENT_TYPE, TUS_CONTENT_TYPE, TUS_VERSION, type Dialect } from './headers.js'

const TUS_EXTENSIONS = 'creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,concatenation'

/** Headers a browser page may read from our answers (CORS). */
export const EXPOSED_HEADERS = [
  'Location', 'Upload-Offset', 'Upload-Length', 'Upload-Defer-Length', 'Upload-Metadata', 'Upload-Expires', 'Upload-Concat',
  'Tus-Resumable', 'Tus-Version', 'Tus-Extension', 'Tus-Max-Size', 'Tus-Checksum-Algorithm',
  'Upload-Complete', 'Upload-Limit', 'Upload-Draft-Interop-Version'
].join(', ')

/** OPTIONS: what the endpoint supports; the draft's Upload-Limit only to a client that speaks it. */
export async function answerOptions (reply: FastifyReply, maxSize: number, speaksDraft: boolean): Promise<void> {
  reply.code(204).headers({
    'tus-version': TUS_VERSION,
    'tus-extension': TUS_EXTENSIONS,
    'tus-max-size': maxSize,
    'tus-checksum-algorithm': [...CHECKSUM_ALGORITHMS].join(','),
    'accept-patch': `${IETF_CONTENT_TYPE}, ${TUS_CONTENT_TYPE}`
  })
  if (speaksDraft) reply.header('upload-limit', `max-size=${maxSize}`)
  await reply.send()
}

/** 412, with the version we speak. */
export function unsupportedVersion (reply: FastifyReply): Error {
  reply.header('tus-version', TUS_VERSION)
  return new ResumableVersionError()
}

/** 405 with Allow: the methods this URL serves. */
export function notAllowed (reply: FastifyReply, method: string, allowed: readonly string[]): Error {
  reply.header('allow', allowed.join(', '))
  return new MethodNotAllowedError(JSON.stringify(method), allowed.join(', '))
}

/** Offset, expiry and completeness, as every answer about the upload carries them. */
export function describe (reply: FastifyReply, upload: ResumableUpload, dialect: Dialect): void {
  reply.header('upload-offset', upload.offset)
  if (!upload.complete) reply.header('upload-expires', new Date(upload.expiresAt).toUTCString())
  if (dialect.ietf) {
    reply.header('upload-draft-interop-version', dialect.version)
    reply.header('upload-complete', upload.complete ? '?1' : '?0')
    reply.header('upload-limit', `max-size=${upload.config.maxFileSize}`)
  }
}

/** HEAD: the description, and what the creation said (metadata and concatenation echoed as sent). */
export async function answerHead (reply: FastifyReply, upload: ResumableUpload, dialect: Dialect): Promise<void> {
  describe(reply, upload, dialect)
  reply.header('cache-control', 'no-store')
  if (upload.metadata !== undefined) reply.header('upload-metadata', upload.metadata)
  if (upload.concatHeader !== undefined) reply.header('upload-concat', upload.concatHeader)
  if (upload.length === undefined) reply.header('upload-defer-length', '1')
  else reply.header('upload-length', upload.length)
  await reply.code(200).send()
}

/** An upload's URL, as the client used the endpoint's: its path (without the query) and the upload's id. */
export function uploadUrl (request: FastifyRequest, upload: ResumableUpload): string {
  return `${request.url.split('?', 1)[0]!}/${upload.id}`
}

/** A creation's answer: 201 with the new upload's URL and its description. */
export async function answerCreated (request: FastifyRequest, reply: FastifyReply, upload: ResumableUpload, dialect: Dialect): Promise<void> {
  reply.header('location', uploadUrl(request, upload))
  describe(reply, upload, dialect)
  await reply.code(201).send()
}

/** The body was not read to its end: the exchange cannot go on after the answer. */
export function bodyUnread (reply: FastifyReply): void {
  closeAfterAnswer(reply)
}

/**
 * A 413: over maxFileSize, unless a more precise reason is given; the draft's
 * Upload-Limit for its clients. `bodyUnread`: refused while its body was coming.
 */
export function tooLarge (
  reply: FastifyReply, dialect: Dialect, config: ResolvedConfig, bodyUnread: boolean, clientName = 'this upload', reason?: Error
): Error {
  if (dialect.ietf) reply.header('upload-limit', `max-size=${config.maxFileSize}`)
  if (bodyUnread) closeAfterAnswer(reply)
  return reason ?? new TooLargeError(clientName, config.uploadName, config.maxFileSize)
}

/** An append past the room it has: the declared Upload-Length, or (length unknown) maxFileSize. */
export function overflow (reply: FastifyReply, dialect: Dialect, upload: ResumableUpload): Error {
  const pastLength = upload.length === undefined ? undefined : new PastLengthError(upload.length)
  return tooLarge(reply, dialect, upload.config, true, 'this upload', pastLength)
}

/**
 * An append at the wrong offset: 409 with the right Upload-Offset, its body unread; the
 * draft answers with problem details (RFC 9457), tus with the error.
 */
export async function offsetMismatch (reply: FastifyReply, dialect: Dialect, upload: ResumableUpload, offset: number): Promise<void> {
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

/**
 * How an append that ended without failing its upload is answered: with the offset
 * kept, whether it ended well, was pre-empted or cut ( `status`), timed out, went past
 * its room, or brought a body that could not be read (the client's bad input).
 */
export async function answerAppend (
  request: FastifyRequest, reply: FastifyReply, upload: ResumableUpload, dialect: Dialect, how: AppendEnd, status: 201 | 204
): Promise<void> {
  if (how === 'timeout') {
    // The spec's advice: a timed-out append ends with its connection. Over HTTP/2 the
    // stream is the unit (the session carries other uploads): the client is answered
    // with the offset kept, then its stream is reset (closeAfterAnswer, set before).
    if (!(request.raw instanceof Http2ServerRequest)) {
      reply.hijack()
      request.raw.destroy()
      return
    }
    describe(reply, upload, dialect)
    throw new ChunkTimeoutError(upload.config.chunkTimeout)
  }
  if (how === 'limit') throw overflow(reply, dialect, upload)
  describe(reply, upload, dialect)
  if (how instanceof Error) throw how
  await reply.code(status).send()
}
