// The seam between the plugin and its transports, the ways bytes reach upload writers:
// the upload route's own HTTP body, the WebSocket channel, the resumable endpoint. The
// plugin (lib/index.ts) hands every upload route to each transport of its list, claims
// refs for the route, and calls each transport's stop at preClose and close at onClose;
// the rest (hooks, handlers, sockets, what is in flight) is the transport's own.
//
// To add a transport, write one module (lib/transports/<name>/route.ts) with a class that
// implements Transport, and add the class to TRANSPORTS in lib/index.ts. Its constructor
// gets the plugin's scope and the shared services, throws what is wrong at registration,
// and holds the transport's state. addRoute wires each upload route: hooks on the route
// itself, or a route derived on its path plus a suffix (`services.derived.derive` gives the
// path, `derivedRoute` options that put it behind everything the route declares). Its
// hooks and handlers receive into an Uploads: an entry per file, announced then fed
// (LiveUploads keeps the open ones). stop (preClose) stops reading, so requests can answer;
// close (onClose) resolves once every writer it opened is closed. If its finished entries
// wait for a ref, holdsEntries says on which routes, and refOf reads a ref submitted in
// another form (an upload URL).
import type { EntryFailure } from '../errors.js'
import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import type { PluginSettings, ResolvedConfig } from '../config.js'
import type { Carried, DerivedRoutes } from '../derived-routes.js'
import type { RefStore } from '../refs.js'
import type { Store, UploadRecord } from '../stores/store.js'
import type { ResumableService } from './resumable/service.js'
import type { Uploads } from '../uploads.js'
import type { TmpFileBudget } from '../writers/tmp-file.js'

/** An upload route, as the plugin's onRoute hook hands it to each transport. */
export interface UploadRoute {
  /** The route's options, which Fastify registers once every onRoute hook ran. */
  readonly options: RouteOptions & { routePath: string }
  /** The plugin scope it is registered in: routes it derives are registered there too. */
  readonly instance: FastifyInstance
  /** `POST /files`, for messages. */
  readonly where: string
  /**
   * Its upload names' configs. A route sharing a derived route with an earlier one takes
   * that route's config objects for the names they share (see DerivedRoutes.derive).
   */
  readonly configs: Map<string, ResolvedConfig>
  /** Its hooks and options as declared, before any transport added hooks: what derived routes carry. */
  readonly carried: Carried
}

/** What the plugin instance shares with its transports. */
export interface Services {
  readonly settings: PluginSettings
  /** Finished entries waiting for their ref. */
  readonly refs: RefStore
  /** Upload state kept between requests and processes: durable resumable uploads' records. */
  readonly store: Store
  /** The temp-file writer's directory, and the bytes handed to its files and not yet on disk. */
  readonly tmpFiles: { readonly dir: string, readonly budget: TmpFileBudget, readonly fsync: boolean }
  /** A record whose upload ended without its writer: what the plugin's own writer left is removed (see Sweeper.abandon). */
  abandonRecord (record: UploadRecord): Promise<void>
  /** Uploads that live across requests (resumable ones, and the channel's that can resume), one registry for the plugin instance. */
  readonly resumable: ResumableService
  /** Routes derived from upload routes, one per path and constraints. */
  readonly derived: DerivedRoutes
  /** A route's preParsing hook that takes its body: checked, once ready, to be still the last. */
  bodyHookLast (route: RouteOptions, hook: unknown): void
}

export interface Transport {
  /** Wires an upload route: hooks on it, or routes it derives. */
  addRoute (route: UploadRoute): void
  /** Whether entries it receives for the route wait, once finished, for a request to the route to claim them by ref. */
  holdsEntries? (route: UploadRoute): boolean
  /** The ref a value submitted for an upload name names, if it is one of this transport's forms; else undefined. */
  refOf? (submitted: string): string | undefined
  /** preClose: stop reading; what is in flight stops at once, so its requests can answer. */
  stop (reason: EntryFailure): Promise<void>
  /** onClose: every request is over; resolves once what is left ended, its writers closed. */
  close? (reason: EntryFailure): Promise<void>
}

export type TransportClass = new (fastify: FastifyInstance, services: Services) => Transport

/** The upload set of a request, or null on routes without allowUpload. */
export function uploadsOf (request: FastifyRequest): Uploads | null {
  return request.uploads as Uploads | null
}
