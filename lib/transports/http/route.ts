// The upload route's own requests: its body, taken before any content-type parser could
// run, is received as multipart or raw uploads; fields (JSON, text, form) go on to the
// scope's parsers. Every request gets its upload set, ended when the request is over.
import type { Readable } from 'node:stream'
import type { EntryFailure } from '../../errors.js'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { PluginSettings } from '../../config.js'
import { Uploads } from '../../uploads.js'
import { bodyKind, continueWithoutBody, holdErrors } from '../route-body.js'
import { closeAfterAnswer } from '../close-after-answer.js'
import { isBodyUnread, leaveBodyUnread } from './body.js'
import { LiveUploads } from '../live-uploads.js'
import { receiveMultipart } from './multipart.js'
import { receiveRaw } from './raw.js'
import { uploadsOf, type Services, type Transport, type UploadRoute } from '../transport.js'

type PreParsingDone = (error?: Error | null) => void

export class HttpTransport implements Transport {
  readonly #settings: PluginSettings
  readonly #bodyHookLast: Services['bodyHookLast']
  /** Upload sets of requests in flight. */
  readonly #live = new LiveUploads()

  constructor (_fastify: FastifyInstance, services: Services) {
    this.#settings = services.settings
    this.#bodyHookLast = services.bodyHookLast
  }

  addRoute ({ options: route, configs, carried }: UploadRoute): void {
    const live = this.#live
    const settings = this.#settings

    function startUploads (request: FastifyRequest, reply: FastifyReply, done: () => void): void {
      const uploads = new Uploads(configs, request, request.log)
      request.uploads = uploads
      live.add(uploads)
      // 'close' comes after the response finished and when the client went away
      // first: onResponse alone misses the second.
      reply.raw.once('close', () => live.end(uploads))
      done()
    }
    /**
     * The route's body, read before any content-type parser could run: multipart and raw
     * uploads are received here; fields (JSON, text, form) go on to the scope's parsers.
     * Last of the route's preParsing hooks, it reads what earlier ones made of the payload.
     */
    function takeUploadBody (request: FastifyRequest, _reply: FastifyReply, payload: Readable, done: PreParsingDone): void {
      const kind = bodyKind(request)
      if (kind === 'none' || kind === 'fields') return done(null)
      const uploads = uploadsOf(request)!
      holdErrors(payload)
      const received = kind === 'multipart' ? receiveMultipart(uploads, request, payload, settings) : receiveRaw(uploads, request, payload)
      received.then((body) => {
        request.body = body
        continueWithoutBody(request, done)
      }, (error: Error) => {
        // Refused before the whole body arrived (and not drained): the rest would be read
        // as the next request, so the connection closes after the answer.
        if (!request.raw.complete) leaveBodyUnread(uploads)
        done(error)
      })
    }
    function closeIfBodyUnread (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: null, payload: unknown) => void): void {
      // The rest of the body was not read (by us, or by Fastify after a parser error): the exchange cannot go on.
      const uploads = uploadsOf(request)
      if ((uploads !== null && isBodyUnread(uploads)) || reply.getHeader('connection') === 'close') closeAfterAnswer(reply)
      done(null, payload)
    }

    route.onRequest = [...carried.hooks.onRequest, startUploads]
    route.preParsing = [...carried.hooks.preParsing, takeUploadBody]
    this.#bodyHookLast(route, takeUploadBody)
    route.onSend = [...carried.hooks.onSend, closeIfBodyUnread]
  }

  /** Uploads still reading stop now, so their requests can answer and drain. */
  async stop (reason: EntryFailure): Promise<void> {
    await this.#live.stop(reason)
  }

  async close (reason: EntryFailure): Promise<void> {
    await this.#live.close(reason)
  }
}
