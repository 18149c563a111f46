// `Upload-Concat: final;<url> <url> …` (concatenation): a new upload made of complete
// partial uploads' bytes, in order. Each partial's bytes are read back through its
// staging writer's `read` and fed to the final upload by `append`, as a PATCH's body
// would be. The partials are held while read (a DELETE, expiry or shutdown removes
// their bytes after); a final that fails ends at once, its writer closed and its slot free.
import { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import { BadConcatError, ConcatReadError } from '../../errors.js'
import { append, type ResumableUpload } from './upload.js'
import { roomOf } from './append.js'
import type { EndpointContext } from './context.js'
import { idOfUrl, type Creation, type Dialect } from './headers.js'
import { finishUpload, openUpload } from './lifecycle.js'
import { answerCreated, tooLarge } from './wire.js'

export async function createFinal (
  context: EndpointContext, request: FastifyRequest, reply: FastifyReply, dialect: Dialect, config: ResolvedConfig, creation: Creation, urls: string[]
): Promise<void> {
  const { registry } = context
  const owner = await context.settings.owner(request)
  const parts = urls.map((url) => partOf(context, url, owner, config))
  const length = parts.reduce((sum, part) => sum + part.length!, 0)
  if (length > config.maxFileSize) throw tooLarge(reply, dialect, config, false)
  // Slot and holds are taken before any await: nothing ends between the checks above and the reads.
  const slot = registry.reserve(owner, config, false, config.maxEntries)
  const holds = [...new Set(parts)].map((part) => part.hold())
  let upload: ResumableUpload
  try {
    upload = await openUpload(context, request, config, slot, {
      clientName: creation.clientName,
      clientType: creation.clientType,
      clientSize: length
    }, { length, metadata: creation.metadata?.raw, concat: 'final', concatHeader: request.headers['upload-concat'] as string, hold: true })
    try {
      await concatenate(context, upload, parts, urls)
      await finishUpload(context, upload)
    } finally {
      // Let go before the answer: the client's next request may come at once.
      upload.entry.carriedBy(undefined)
    }
  } finally {
    for (const release of holds) release()
  }
  for (const part of parts) {
    registry.remove(part, 'concatenated')
    // Its bytes went into the final upload: taken, not dropped.
    await part.discard(true)
  }
  await answerCreated(request, reply, upload, dialect)
}

/** A partial the final may use: this owner's, of this upload name, complete. */
function partOf (context: EndpointContext, url: string, owner: string | undefined, config: ResolvedConfig): ResumableUpload {
  const part = context.registry.find(idOfUrl(url))
  if (typeof part !== 'object' || part.concat !== 'partial' || part.owner !== owner || part.config.key !== config.key) {
    throw new BadConcatError(`${url} is not a partial upload of this endpoint`)
  }
  if (!part.complete) throw new BadConcatError(`${url} is not complete (concatenation-unfinished is not supported)`)
  return part
}

/**
 * The partials' bytes into the final upload, one after the other, while the final is
 * held as a PATCH holds its upload (a shutdown stops it the same way). A failure ends
 * the final now, and says why.
 */
async function concatenate (context: EndpointContext, upload: ResumableUpload, parts: ResumableUpload[], urls: string[]): Promise<void> {
  const { registry } = context
  const { release, onStop } = await upload.acquireToAppend()
  try {
    for (const [index, part] of parts.entries()) {
      const body = Readable.from(storedBytes(part))
      // Reading a partial back is a writer call, not a client: bounded by writerTimeout,
      // past which it could not be read (a ConcatReadError below), never by chunkTimeout.
      const how = await append(upload, body, { limit: roomOf(upload), idle: upload.config.writerTimeout, onStop })
      // Stopped early, its staged file (if any) is closed now.
      body.destroy()
      if (how === 'end') continue
      // Its writer failed, or the final was ended meanwhile (shutdown): say which.
      if (how === 'failed' || how === 'stopped') throw registry.endedDuring(upload)
      // The partial's bytes could not be read (removed behind our back): the final cannot complete.
      registry.remove(upload, 'failed')
      await upload.entry.cancel()
      throw new ConcatReadError(urls[index]!)
    }
  } finally {
    release()
  }
}

/** A partial's stored bytes; a writer that fails to read them fails the stream, not the caller. */
async function * storedBytes (part: ResumableUpload): AsyncGenerator<Buffer> {
  yield * part.entry.read()
}
