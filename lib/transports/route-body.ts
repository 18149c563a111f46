// Request bodies as the HTTP transports (an upload route's own, and the resumable
// endpoint) take them, without a content-type parser: the scope's parsers belong to the
// app. A preParsing hook of the route reads the body itself, then shows Fastify a request
// without one, so no parser runs and the request goes on to validation and the handler.
// Also what both read from a body: whether there is one, and what its stream's error means.
import { Http2ServerRequest } from 'node:http2'
import type { Readable } from 'node:stream'
import type { FastifyRequest } from 'fastify'
import { mediaType } from '../config.js'
import { BodyUnreadableError, PrematureCloseError, asFailure, type EntryFailure } from '../errors.js'

/**
 * Methods whose bodies upload routes take: Fastify's standard methods with a body, but
 * QUERY (Fastify requires its Content-Type header to be there). Any other method is left
 * to Fastify, as on any route.
 */
const TAKES_BODY = new Set(['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])

/**
 * Content types an upload route leaves to the scope's parsers: bodies that carry fields
 * and refs, never a file.
 */
export const FIELD_TYPES: ReadonlySet<string> = new Set(['application/json', 'text/plain', 'application/x-www-form-urlencoded'])

/**
 * What an upload route does with a request's body: nothing (none, or a method left to
 * Fastify), hand it to the scope's parsers (fields), or receive it (multipart, raw).
 */
export type BodyKind = 'none' | 'fields' | 'multipart' | 'raw'

/**
 * Whether an upload route takes a body from the request: one of the methods above, with
 * a Content-Type (Fastify then looks for a parser, even for an empty body) or a body on
 * the wire.
 */
export function takesBody (request: FastifyRequest): boolean {
  if (!TAKES_BODY.has(request.method)) return false
  return request.headers['content-type'] !== undefined || hasBody(request)
}

export function bodyKind (request: FastifyRequest): BodyKind {
  if (!takesBody(request)) return 'none'
  const type = mediaType(request.headers['content-type'])
  if (type === 'multipart/form-data') return 'multipart'
  return FIELD_TYPES.has(type) ? 'fields' : 'raw'
}

type Done = (error?: Error | null) => void

/**
 * Ends a preParsing hook whose route took the body: Fastify's next look at the headers
 * (right after the last preParsing hook, to pick a parser) sees none of the body's, so it
 * runs no parser. That one look only: every later read, the handler's included, sees the
 * request's real headers (and `request.mediaType` its real type).
 */
export function continueWithoutBody (request: FastifyRequest, done: Done): void {
  const bodiless = { ...request.headers }
  delete bodiless['content-type']
  delete bodiless['content-length']
  delete bodiless['transfer-encoding']
  const restore = (): boolean => Reflect.deleteProperty(request, 'headers')
  // An own property shadows Fastify's `headers` accessor until it is deleted.
  Object.defineProperty(request, 'headers', {
    configurable: true,
    get () {
      restore()
      return bodiless
    }
  })
  try {
    // Fastify picks the parser synchronously, inside this call.
    done(null)
  } finally {
    restore()
  }
}

/** Node's words for a body whose source closed before its end: the client went away. */
const CLOSED_EARLY = new Set(['ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE'])

/**
 * What a body stream's 'error' means. The client going away shows as Node's reset (or,
 * through a pipeline, a premature close): a premature close. Anything else is a body that
 * could not be read (a preParsing hook's decoder failed on it): the client's bad input, a
 * 400 naming the error's code only (its message and stack, possibly internal, are logged
 * as the cause). An error that carries its own status (a hook's coded error) passes through.
 */
export function bodyStreamFailure (error: Error): EntryFailure {
  const { code, statusCode } = error as Error & { code?: unknown, statusCode?: unknown }
  if (typeof code === 'string' && CLOSED_EARLY.has(code)) return prematureClose()
  if (typeof statusCode === 'number') return asFailure(error)
  const reason = typeof code === 'string' && /^[A-Z][A-Z0-9_]*$/.test(code) ? code : 'its stream failed'
  return new BodyUnreadableError(reason, { cause: error })
}

/**
 * Whether the request carries a body. HTTP/1.1 says so in its headers (chunked, or a
 * Content-Length above 0); HTTP/2 by whether its HEADERS frame ended the stream: a body
 * there needs no Content-Length.
 */
export function hasBody (request: FastifyRequest): boolean {
  const { raw, headers } = request
  const length = headers['content-length']
  // An HTTP/2 stream left open after its HEADERS may still end with no DATA (Node's own
  // client does that by default): without Content-Length or Content-Type, as for Fastify,
  // that is no body.
  if (raw instanceof Http2ServerRequest) {
    return !raw.stream.endAfterHeaders && length !== '0' && (length !== undefined || headers['content-type'] !== undefined)
  }
  return headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

export function prematureClose (): EntryFailure {
  return new PrematureCloseError()
}

/**
 * For a body stream the plugin took: its 'error' may come while no reader listens (a
 * writer starting, a handler waiting for its upload). Unheard, it would crash the process;
 * heard here, the stream keeps it (`errored`) for whoever reads it next.
 */
export function holdErrors (payload: Readable): void {
  payload.on('error', heardLater)
}

function heardLater (): void {}
