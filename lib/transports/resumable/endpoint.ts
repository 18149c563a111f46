// Resumable HTTP uploads: tus 1.0 (creation, creation-with-upload, creation-defer-length,
// termination, expiration, checksum, concatenation) and the IETF "Resumable Uploads for
// HTTP" draft (interop versions 5 to 8), on one endpoint per upload route. Each upload
// is one entry that lives across requests; its offset is always the bytes its writer
// accepted. This file dispatches each request by its method to the file that handles it.
import type { FastifyReply, FastifyRequest } from 'fastify'
import { InvalidConfigError } from '../../errors.js'
import { appendTo } from './append.js'
import type { EndpointContext } from './context.js'
import { create } from './create.js'
import { head } from './head.js'
import { dialectOf, type Dialect } from './headers.js'
import { findUpload } from './lifecycle.js'
import { options } from './options.js'
import { terminate } from './terminate.js'
import { notAllowed, unsupportedVersion } from './wire.js'

/** Methods each URL serves (X-HTTP-Method-Override names the method); others get 405 with Allow. */
const ENDPOINT_METHODS = ['OPTIONS', 'POST']
const UPLOAD_METHODS = ['OPTIONS', 'HEAD', 'PATCH', 'DELETE']

/** The handlers of one route's resumable endpoint. */
export class ResumableEndpoint {
  readonly #context: EndpointContext

  constructor (context: EndpointContext) {
    // A final upload reads its partials back through the writer that staged them.
    if (context.settings.staging.read === undefined) {
      throw new InvalidConfigError('The writer that stages partial uploads (concatenation) must implement read(state): the final upload reads their bytes back through it')
    }
    this.#context = context
  }

  /**
   * Any request to the endpoint URL, by its method: X-HTTP-Method-Override when present
   * (tus 1.0: it MUST be interpreted as the method, the actual one ignored).
   */
  async endpoint (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const method = methodOf(request)
    if (method === 'OPTIONS') return await options(this.#context, request, reply)
    if (method !== 'POST') throw notAllowed(reply, method, ENDPOINT_METHODS)
    await create(this.#context, request, reply, this.#dialect(request, reply))
  }

  /** Any request to an upload URL, by its method (as for the endpoint). */
  async upload (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const method = methodOf(request)
    if (method === 'OPTIONS') return await options(this.#context, request, reply)
    if (!UPLOAD_METHODS.includes(method)) throw notAllowed(reply, method, UPLOAD_METHODS)
    const dialect = this.#dialect(request, reply)
    const upload = await findUpload(this.#context, request)
    if (method === 'HEAD') return await head(this.#context, upload, reply, dialect)
    if (method === 'DELETE') return await terminate(this.#context, upload, reply)
    await appendTo(this.#context, upload, request, reply, dialect, 204)
  }

  #dialect (request: FastifyRequest, reply: FastifyReply): Dialect {
    const dialect = dialectOf(request.headers)
    if (dialect === undefined) throw unsupportedVersion(reply)
    return dialect
  }
}

function methodOf (request: FastifyRequest): string {
  const override = request.headers['x-http-method-override']
  return typeof override === 'string' ? override.trim().toUpperCase() : request.method
}
