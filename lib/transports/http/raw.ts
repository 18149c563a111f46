// A raw body (any content type but multipart and the field types, see route-body.ts) is one entry: the
// route's only upload name, or the one named by the `upload` query parameter.
import type { Readable } from 'node:stream'
import { parse as parseContentDisposition } from 'content-disposition'
import type { FastifyRequest } from 'fastify'
import { chooseConfig, mediaType, safeBasename } from '../../config.js'
import type { Uploads } from '../../uploads.js'
import { HttpBody, drainRest, feedEntry } from './body.js'

function filenameOf (header: string | undefined): string {
  if (header === undefined) return ''
  try {
    const { parameters } = parseContentDisposition(header)
    return safeBasename(parameters.filename)
  } catch {
    return ''
  }
}

/** Content-Length, when it describes the payload: not once a preParsing hook replaced it (a gunzip, say). */
function declaredSize (request: FastifyRequest, payload: Readable): number | undefined {
  const length = request.headers['content-length']
  if (length === undefined || request.headers['transfer-encoding'] !== undefined || payload !== request.raw) return undefined
  return Number(length)
}

export async function receiveRaw (uploads: Uploads, request: FastifyRequest, payload: Readable): Promise<void> {
  const config = chooseConfig(uploads.configs, request.query)
  const entry = await uploads.announce(config, {
    clientName: filenameOf(request.headers['content-disposition']),
    clientType: mediaType(request.headers['content-type']),
    clientSize: declaredSize(request, payload)
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
