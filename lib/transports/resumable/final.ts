// `Upload-Concat: final;<url> <url> …` (concatenation): a new upload made of complete
// partial uploads' bytes, in order, fed to the route's writer. The partials are held
// while read (a DELETE, expiry or shutdown removes their bytes after); a final that
// fails ends at once, its writer closed and its slot free.
import { createReadStream } from 'node:fs'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import { BadConcatError, ConcatReadError } from '../../errors.js'
import type { ResumableUpload } from '../resumable-upload.js'
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
    for (const [index, part] of parts.entries()) {
      await concatenate(context, upload, part, urls[index]!)
    }
    await finishUpload(context, upload)
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

/** One partial's bytes into the final upload. A failure ends the final now, and says why. */
async function concatenate (context: EndpointContext, upload: ResumableUpload, part: ResumableUpload, url: string): Promise<void> {
  const { registry } = context
  try {
    const { path } = part.entry.meta() as { path: string }
    for await (const chunk of createReadStream(path, { highWaterMark: upload.config.chunkSize })) {
      await upload.entry.write(chunk as Buffer)
    }
  } catch {
    if (upload.entry.ended || registry.find(upload.id) !== upload) throw registry.endedDuring(upload)
    // The partial's bytes could not be read (removed behind our back): the final cannot complete.
    registry.remove(upload, 'failed')
    await upload.entry.cancel()
    throw new ConcatReadError(url)
  }
}
