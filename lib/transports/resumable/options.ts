// OPTIONS on the endpoint or an upload URL: what the endpoint supports (no version needed).
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { EndpointContext } from './context.js'
import { answerOptions } from './wire.js'

export async function options (context: EndpointContext, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  await answerOptions(reply, maxSize(context), request.headers['upload-draft-interop-version'] !== undefined)
}

/** The largest upload the endpoint takes, over its upload names. */
export function maxSize (context: EndpointContext): number {
  let max = 0
  for (const config of context.configs.values()) max = Math.max(max, config.maxFileSize)
  return max
}
