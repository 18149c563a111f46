// The resumable endpoint (tus 1.0, IETF draft) of upload routes with resumable names:
// the route's path plus resumableSuffix, and upload URLs under it, behind the route's own
// hooks. Uploads live across requests in one registry per plugin instance; a complete one
// waits for its ref (its id, or its URL), which a request to the route claims.
import type { Readable } from 'node:stream'
import type { EntryFailure } from '../../errors.js'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { ResolvedConfig } from '../../config.js'
import { derivedRoute } from '../../derived-routes.js'
import { continueWithoutBody, holdErrors, takesBody } from '../route-body.js'
import { TmpFileWriter } from '../../writers/tmp-file.js'
import { EXPOSED_HEADERS, ResumableEndpoint, ResumableRegistry } from './index.js'
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
  /** Resumable uploads in progress, across requests. */
  readonly #registry: ResumableRegistry
  readonly #log: FastifyBaseLogger
  /** Upload configs already said to be unable to continue after a restart. */
  readonly #notDurable = new Set<string>()

  constructor (fastify: FastifyInstance, services: Services) {
    this.#services = services
    this.#log = fastify.log
    this.#registry = new ResumableRegistry(services.settings.maxResumableUploads, fastify.log)
  }

  holdsEntries (route: UploadRoute): boolean {
    return resumableConfigs(route.configs).size > 0
  }

  /** A resumable upload may be named by its URL: its id is the ref. */
  refOf (submitted: string): string | undefined {
    return submitted.includes('/') ? idOfUrl(submitted) : undefined
  }

  addRoute (upload: UploadRoute): void {
    const { refs, store, settings, tmpFiles, derived, abandonRecord } = this.#services
    // After the channel's: a shared channel may have given the route its configs.
    const configs = resumableConfigs(upload.configs)
    if (configs.size === 0) return
    const base = derived.derive(upload, settings.resumableSuffix, 'resumable endpoint', configs)
    if (base === undefined) return
    const endpoint = new ResumableEndpoint(configs, this.#registry, {
      refs,
      store,
      abandonRecord,
      notDurable: (config) => this.#warnNotDurable(config, upload.where),
      owner: settings.owner,
      expiry: settings.resumableExpiry,
      maxLifetime: settings.resumableMaxLifetime,
      staging: TmpFileWriter,
      stagingOptions: tmpFiles
    })
    // Behind everything the route declared (hooks, constraints, errorHandler, …). Each
    // `...common` below gets its own hook arrays (see derivedOptions).
    const common = derivedRoute(upload.where, handOverBody, upload.carried, { first: { onRequest: markResumable }, last: { preParsing: handOverBody, onSend: exposeHeaders } })
    // Every method: X-HTTP-Method-Override names the method whatever the actual one, and
    // the endpoint answers the others (405, with Tus-Resumable) itself.
    const method = upload.instance.supportedMethods
    upload.instance.route({ ...common, method, url: base, handler: async (request, reply) => await endpoint.endpoint(request, reply) } as RouteOptions)
    upload.instance.route({ ...common, method, url: `${base}/:id`, handler: async (request, reply) => await endpoint.upload(request, reply) } as RouteOptions)
  }

  /** Once per upload config: its writer has no checkpoint and restore, so its uploads end with this process. */
  #warnNotDurable (config: ResolvedConfig, where: string): void {
    if (this.#notDurable.has(config.key)) return
    this.#notDurable.add(config.key)
    this.#log.warn({ uploadName: config.uploadName, config: config.key }, `resumable uploads of "${config.uploadName}" of ${where} cannot continue after a restart: their writer has no checkpoint() and restore()`)
  }

  /**
   * No new upload; appends in flight stop and answer 503; unfinished durable uploads are
   * saved and kept for the next process, others cancelled. Nothing is left for close.
   */
  async stop (reason: EntryFailure): Promise<void> {
    await this.#registry.shutdown(reason)
  }
}
