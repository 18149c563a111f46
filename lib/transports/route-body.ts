// How upload routes (and their resumable endpoints) take request bodies without a
// content-type parser: the scope's parsers belong to the app. A preParsing hook of the
// route reads the body itself, then shows Fastify a request without one, so no parser
// runs and the request goes on to validation and the handler.
import type { FastifyRequest } from 'fastify'
import { mediaType } from '../config.js'
import { hasBody } from './http/body.js'

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
