// POST to the endpoint: a new upload (creation, creation-defer-length), with its first
// bytes when the request carries a body (creation-with-upload). `Upload-Concat: partial`
// stages one part of a later concatenation; `final;…` is final.ts.
import type { FastifyReply, FastifyRequest } from 'fastify'
import { chooseConfig } from '../../config.js'
import { hasBody } from '../route-body.js'
import type { AppendEnd } from './upload.js'
import { appendTo } from './append.js'
import type { EndpointContext } from './context.js'
import { createFinal } from './final.js'
import { parseCreation, type Dialect } from './headers.js'
import { abandonUpload, finishUpload, openUpload, stagingConfig } from './lifecycle.js'
import { answerCreated, tooLarge, uploadUrl } from './wire.js'

/** Partial uploads (for concatenation) an owner may hold per upload name, per `maxEntries`. */
const PARTIALS_PER_ENTRY = 16

export async function create (context: EndpointContext, request: FastifyRequest, reply: FastifyReply, dialect: Dialect): Promise<void> {
  const config = chooseConfig(context.configs, request.query)
  const withBody = hasBody(request)
  const creation = parseCreation(request.headers, dialect, withBody)
  if (creation.concat?.kind === 'final') return await createFinal(context, request, reply, dialect, config, creation, creation.concat.parts)
  const partial = creation.concat?.kind === 'partial'
  const { length, clientName } = creation
  if (length !== undefined && length > config.maxFileSize) throw tooLarge(reply, dialect, config, false, clientName)
  const owner = await context.settings.owner(request)
  // The slot is taken now, before any await: concurrent creations cannot pass the limits together.
  const slot = context.registry.reserve(owner, config, partial, partial ? config.maxEntries * PARTIALS_PER_ENTRY : config.maxEntries)
  const upload = await openUpload(context, request, partial ? stagingConfig(context, config) : config, slot, {
    clientName,
    clientType: creation.clientType,
    clientSize: length
  }, { length, metadata: creation.metadata?.raw, concat: partial ? 'partial' : undefined, concatHeader: partial ? 'partial' : undefined, hold: !partial })
  if (!withBody) {
    upload.announced = true
    try {
      if (upload.length === 0) await finishUpload(context, upload)
    } finally {
      // Let go before the answer: the client's next request may come at once, and carry it.
      upload.entry.carriedBy(undefined)
    }
    return await answerCreated(request, reply, upload, dialect)
  }
  reply.header('location', uploadUrl(request, upload))
  let how: AppendEnd | undefined
  try {
    how = await appendTo(context, upload, request, reply, dialect, 201)
  } catch (error) {
    // Refused (its body, type, checksum…): the client never gets the upload's URL.
    reply.removeHeader('location')
    await abandonUpload(context, upload, request)
    throw error
  }
  // Cut before the answer: nobody knows this upload's URL, so nobody can resume it.
  if (how === 'aborted' || how === 'timeout') await abandonUpload(context, upload, request)
  else upload.announced = true
}
