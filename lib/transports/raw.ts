// A raw body (any content type Fastify has no other parser for) is one entry: the
// route's only upload name, or the one named by the `upload` query parameter.
import type { Readable } from 'node:stream'
import { parse as parseContentDisposition } from 'content-disposition'
import type { FastifyRequest } from 'fastify'
import { mediaType, safeBasename, type ResolvedConfig } from '../config.js'
import { NoUploadNameError, UnexpectedFieldError } from '../errors.js'
import type { Uploads } from '../uploads.js'
import { HttpBody, drainRest, feedEntry } from './http-body.js'

function chooseConfig (uploads: Uploads, request: FastifyRequest): ResolvedConfig {
  const names = [...uploads.configs.keys()]
  const asked = (request.query as Record<string, unknown> | undefined)?.upload
  if (typeof asked === 'string') {
    const config = uploads.configs.get(asked)
    if (config === undefined) throw new UnexpectedFieldError(asked, names.join(', '))
    return config
  }
  if (names.length > 1) throw new NoUploadNameError(names.join(', '))
  return uploads.configs.get(names[0]!)!
}

function filenameOf (header: string | undefined): string {
  if (header === undefined) return ''
  try {
    const { parameters } = parseContentDisposition(header)
    return safeBasename(parameters.filename)
  } catch {
    return ''
  }
}

function declaredSize (request: FastifyRequest): number | undefined {
  const length = request.headers['content-length']
  if (length === undefined || request.headers['transfer-encoding'] !== undefined) return undefined
  return Number(length)
}

export async function receiveRaw (uploads: Uploads, request: FastifyRequest, payload: Readable): Promise<void> {
  const config = chooseConfig(uploads, request)
  const entry = await uploads.announce(config, {
    clientName: filenameOf(request.headers['content-disposition']),
    clientType: mediaType(request.headers['content-type']),
    clientSize: declaredSize(request)
  })
  if (entry.failure !== undefined) {
    // Refused before any byte was read (too large by Content-Length, not accepted, …).
    await drainRest(uploads, payload)
    if (config.onEntryError === 'continue') return
    throw entry.failure
  }
  const body = new HttpBody(uploads, payload)
  try {
    await body.read(feedEntry(entry, payload, body))
  } catch (error) {
    if (error !== entry.failure || config.onEntryError === 'fail' || uploads.aborted !== entry.failure) throw error
  }
}
