// The WebSocket channel of upload routes (with `channel: true`): GET on the route's path
// plus channelSuffix, behind the route's own hooks (its authentication protects the
// channel too). Finished entries wait for their ref, which a request to the route claims.
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { PluginSettings } from '../../config.js'
import { derivedRoute } from '../../derived-routes.js'
import { ChannelNeedsWebsocketError, ChannelOrderError, type EntryFailure } from '../../errors.js'
import { Uploads } from '../../uploads.js'
import { LiveUploads } from '../live-uploads.js'
import { uploadsOf, type Services, type Transport, type UploadRoute } from '../transport.js'
import { Channel, ChannelBudget, SUBPROTOCOL_V1, SUBPROTOCOL_V2, maxMessageBytes, type ChannelSocket } from './channel.js'

/** A `ws` socket as the channel route's handler gets it. */
interface WsSocket extends ChannelSocket {
  readonly protocol: string
}

export class ChannelTransport implements Transport {
  readonly #services: Services
  readonly #settings: PluginSettings
  /** Chunk bytes received over this instance's channels and waiting for their writers. */
  readonly #budget: ChannelBudget
  /** Upload sets of open sockets, and of closed ones whose writers are still closing. */
  readonly #live = new LiveUploads()
  /** Channel sockets open, closed with 1001 at shutdown, and their channels. */
  readonly #sockets = new Map<Uploads, WsSocket>()
  readonly #channels = new Map<Uploads, Channel>()
  /** The plugin is shutting down: a socket upgraded from now on is closed at once. */
  #stopping = false
  /** Closed sockets' channels still starting a writer (`Channel.idle`). */
  readonly #starting = new Set<Promise<void>>()

  constructor (fastify: FastifyInstance, services: Services) {
    this.#services = services
    this.#settings = services.settings
    // @fastify/websocket's preClose closes every socket it tracks, without a code; preClose
    // hooks run in registration order, so ours must come first to tell channel sockets why.
    if (this.#settings.channel && fastify.hasDecorator('websocketServer')) throw new ChannelOrderError()
    this.#budget = new ChannelBudget(this.#settings.channelQueueBytes)
  }

  holdsEntries (): boolean {
    return this.#settings.channel
  }

  addRoute (upload: UploadRoute): void {
    if (!this.#settings.channel) return
    const { instance, configs, where, carried } = upload
    const path = this.#services.derived.derive(upload, this.#settings.channelSuffix, 'upload channel', new Map(configs))
    if (path === undefined) return
    if (!instance.hasDecorator('websocketServer')) throw new ChannelNeedsWebsocketError(where)
    const { refs, settings, resumable } = this.#services
    const live = this.#live
    const sockets = this.#sockets
    const channels = this.#channels
    const stopping = (): boolean => this.#stopping
    const starting = this.#starting
    const options = { window: settings.channelWindow, maxMessageBytes: maxMessageBytes(configs.values()), budget: this.#budget }
    /** Version 2 entries are resumable uploads of the route, in the plugin's registry. */
    const context = resumable.context(configs, where)
    /** Each socket's owner, found once the route's hooks ran. */
    const owners = new WeakMap<FastifyRequest, string | undefined>()

    function startChannelUploads (request: FastifyRequest, _reply: FastifyReply, done: () => void): void {
      request.uploads = new Uploads(configs, request, request.log)
      done()
    }
    // After the route's own hooks: the owner may depend on what they found (a session, a user).
    async function holdFinished (request: FastifyRequest): Promise<void> {
      const owner = await settings.owner(request)
      owners.set(request, owner)
      uploadsOf(request)!.holdFinished(refs, owner)
    }
    function serveChannel (socket: WsSocket, request: FastifyRequest): void {
      const uploads = uploadsOf(request)!
      const version = socket.protocol === SUBPROTOCOL_V2 ? 2 : socket.protocol === SUBPROTOCOL_V1 ? 1 : undefined
      if (version === undefined) return socket.close(1002, `use subprotocol ${SUBPROTOCOL_V2} (or ${SUBPROTOCOL_V1})`)
      // Upgraded after the shutdown began: the server would wait for it to close.
      if (stopping()) return socket.close(1001, 'server shutting down')
      live.add(uploads)
      sockets.set(uploads, socket)
      const resume = version === 2 ? { context, request, owner: owners.get(request) } : undefined
      const channel = new Channel(socket, uploads, { ...options, resumable: resume })
      channels.set(uploads, channel)
      socket.once('close', () => {
        sockets.delete(uploads)
        channels.delete(uploads)
        live.end(uploads)
        // Writers it was starting start (or fail) after the socket is gone: shutdown waits for them.
        const idle = channel.idle()
        starting.add(idle)
        idle.finally(() => starting.delete(idle)).catch(() => {})
      })
    }

    instance.route({
      // Behind everything the route declared (hooks, constraints, errorHandler, …).
      ...derivedRoute(where, undefined, carried, { first: { onRequest: startChannelUploads }, last: { preHandler: holdFinished } }),
      method: 'GET',
      url: path,
      websocket: true,
      handler: serveChannel
    } as unknown as RouteOptions)
  }

  /**
   * Each socket hears why its entries stopped, then closes with 1001 (going away). Version 2
   * entries the next process can go on with are not stopped: they are saved as their
   * socket closes, and kept (see ResumableRegistry.shutdown).
   */
  async stop (reason: EntryFailure): Promise<void> {
    this.#stopping = true
    await Promise.all([this.#live.stop(reason), ...[...this.#channels.values()].map(async (channel) => await channel.shutDown(reason))])
    for (const socket of this.#sockets.values()) socket.close(1001, 'server shutting down')
  }

  /** Every writer a channel opened is closed, and none is still starting. */
  async close (reason: EntryFailure): Promise<void> {
    await Promise.all([this.#live.close(reason), ...this.#starting, ...[...this.#channels.values()].map(async (channel) => await channel.idle())])
  }
}
