// The resumable endpoint (tus 1.0, IETF draft) of upload routes with resumable names:
// the route's path plus resumableSuffix, and upload URLs under it, behind the route's own
// hooks. Uploads live across requests in one registry per plugin instance; a complete one
// waits for its ref (its id, or its URL), which a request to the route claims.
import type { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import { derivedRoute } from '../../derived-routes.js'
import { continueWithoutBody, holdErrors, takesBody } from '../route-body.js'
import { EXPOSED_HEADERS, ResumableEndpoint } from './index.js'
import { TUS_VERSION, idOfUrl } from './headers.js'
import type { Services, Transport, UploadRoute } from '../transport.js'

type PreParsingDone = (error?: Error | null) => void

function markResumable (_request: FastifyRequest, reply: FastifyReply, done: () => void): void {
  reply.header('tus-resumable', TUS_VERSION)
  done()
}

/** The endpoint reads bodies itself: `request.body` is the payload, unread. */
function handOverBody (request: FastifyRequest, _reply: FastifyReply, payload: Readable, done: PreParsingDone): void {
  if (!takesBody(request)) return done(null)
  holdErrors(payload)
  request.body = payload
  continueWithoutBody(request, done)
}

// CORS: whoever allowed the origin (@fastify/cors, say), the page may read the protocol's headers.
function exposeHeaders (_request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: null, payload: unknown) => void): void {
  if (reply.getHeader('access-control-allow-origin') !== undefined) {
    const exposed = reply.getHeader('access-control-expose-headers')
    reply.header('access-control-expose-headers', exposed === undefined ? EXPOSED_HEADERS : `${String(exposed)}, ${EXPOSED_HEADERS}`)
  }
  done(null, payload)
}

/** The route's upload names that its resumable endpoint serves. */
function resumableConfigs (configs: Map<string, ResolvedConfig>): Map<string, ResolvedConfig> {
  return new Map([...configs].filter(([, config]) => config.resumable))
}

export class ResumableTransport implements Transport {
  readonly #services: Services

  constructor (_fastify: FastifyInstance, services: Services) {
    this.#services = services
  }

  holdsEntries (route: UploadRoute): boolean {
    return resumableConfigs(route.configs).size > 0
  }

  /** A resumable upload may be named by its URL: its id is the ref. */
  refOf (submitted: string): string | undefined {
    return submitted.includes('/') ? idOfUrl(submitted) : undefined
  }

  addRoute (upload: UploadRoute): void {
    const { settings, derived, resumable } = this.#services
    // After the channel's: a shared channel may have given the route its configs.
    const configs = resumableConfigs(upload.configs)
    if (configs.size === 0) return
    const base = derived.derive(upload, settings.resumableSuffix, 'resumable endpoint', configs)
    if (base === undefined) return
    const endpoint = new ResumableEndpoint(resumable.context(configs, upload.where))
    // Behind everything the route declared (hooks, constraints, errorHandler, …). Each
    // `...common` below gets its own hook arrays (see derivedOptions).
    const common = derivedRoute(upload.where, handOverBody, upload.carried, { first: { onRequest: markResumable }, last: { preParsing: handOverBody, onSend: exposeHeaders } })
    // Every method: X-HTTP-Method-Override names the method whatever the actual one, and
    // the endpoint answers the others (405, with Tus-Resumable) itself.
    const method = upload.instance.supportedMethods
    upload.instance.route({ ...common, method, url: base, handler: async (request, reply) => await endpoint.endpoint(request, reply) } as RouteOptions)
    upload.instance.route({ ...common, method, url: `${base}/:id`, handler: async (request, reply) => await endpoint.upload(request, reply) } as RouteOptions)
  }

  /** Nothing of its own to stop: the plugin shuts the registry down (ResumableService), which the channel shares. */
  async stop (): Promise<void> {}
}
