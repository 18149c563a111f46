// HEAD on an upload URL: where the upload stands, for a client about to resume it.
import type { FastifyReply } from 'fastify'
import type { ResumableUpload } from './upload.js'
import type { EndpointContext } from './context.js'
import type { Dialect } from './headers.js'
import { answerHead } from './wire.js'

export async function head (context: EndpointContext, upload: ResumableUpload, reply: FastifyReply, dialect: Dialect): Promise<void> {
  // A writer call in flight settles first (the holder is asked to stop): the offset
  // reported here is one the next append accepts.
  const release = await upload.acquire()
  try {
    context.registry.assertLive(upload)
    // A HEAD is activity: the expiry it reports is the one the record keeps, after a crash too.
    upload.touch()
    await context.registry.saveExpiry(upload)
  } finally {
    release()
  }
  await answerHead(reply, upload, dialect)
}
