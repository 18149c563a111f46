// DELETE on an upload URL (termination): the upload ends now, once any request writing
// to it has stopped; later requests to its URL get 410.
import type { FastifyReply } from 'fastify'
import type { ResumableUpload } from './upload.js'
import type { EndpointContext } from './context.js'
import { terminateUpload } from './lifecycle.js'

export async function terminate (context: EndpointContext, upload: ResumableUpload, reply: FastifyReply): Promise<void> {
  const release = await upload.acquire()
  try {
    context.registry.assertLive(upload)
    await terminateUpload(context, upload)
  } finally {
    release()
  }
  await reply.code(204).send()
}
