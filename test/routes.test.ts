// The routes an upload route derives (its channel, its resumable endpoint): once per path
// and prefix, and behind everything that protects or shapes the route. Real sockets.
import { createGunzip, gzipSync } from 'node:zlib'
import websocket from '@fastify/websocket'
import Fastify, {
  type FastifyError, type FastifyInstance, type FastifyPluginAsync, type FastifyReply, type FastifyRequest, type FastifyServerOptions, type RouteOptions, type RouteShorthandOptions,
  type preParsingAsyncHookHandler
} from 'fastify'
import fp from 'fastify-plugin'
import t, { type Test } from 'tap'
import { Type } from 'typebox'
import chunkedUpload, { type AllowUpload, type ChunkedUploadOptions } from '../lib/index.js'
import { ProtocolClient } from './kit/channel.js'
import { Recorder, bytes, listen, sha256 } from './kit/index.js'
import { OCTETS, TUS, send } from './kit/resumable.js'

/** The plugin (channel on) and @fastify/websocket, then the app's routes, listening. */
async function start (t: Test, routes: (app: FastifyInstance) => void, options: ChunkedUploadOptions = {}): Promise<{ app: FastifyInstance, url: string, wsUrl: string }> {
  const app = Fastify()
  await app.register(chunkedUpload, { channel: true, ...options })
  await app.register(websocket)
  routes(app)
  const started = await listen(t, app)
  return { ...started, wsUrl: started.url.replace('http:', 'ws:') }
}

/** Whether a channel socket opens at `url` (closed again at once). */
async function channelOpens (url: string, headers: Record<string, string> = {}): Promise<string> {
  try {
    const client = await ProtocolClient.open(url, undefined, headers)
    client.socket.close()
    await client.closed
    return 'open'
  } catch (error) {
    return (error as Error).message
  }
}

/** What the route answers: the files it consumed. */
async function consumeAll (request: FastifyRequest): Promise<unknown> {
  return await request.uploads.consume('file', (meta: { sha256: string }) => meta.sha256)
}

t.test('two upload routes on one path share one channel and one resumable endpoint', async (t) => {
  const recorder = new Recorder()
  // Declared twice, alike: the same options, the same writer.
  const allowUpload = (): AllowUpload => ({ file: { accept: 'any', resumable: true, writer: recorder.factory, maxEntries: 2 } })
  const { url, wsUrl } = await start(t, (app) => {
    app.post('/files', { allowUpload: allowUpload() }, consumeAll)
    app.put('/files', { allowUpload: allowUpload() }, consumeAll)
    // A trailing slash is the same path.
    app.patch('/files/', { allowUpload: allowUpload() }, consumeAll)
  })
  t.equal((await send(`${url}/files/tus`, 'OPTIONS')).status, 204)
  t.equal(await channelOpens(`${wsUrl}/files/ws`), 'open')

  // An upload through the shared endpoint is claimed by either route.
  for (const method of ['PUT', 'POST']) {
    const data = bytes(5000, method.length)
    const created = await send(`${url}/files/tus`, 'POST', { ...TUS, 'upload-length': data.length, 'content-type': OCTETS }, data)
    t.equal(created.status, 201)
    const claimed = await fetch(`${url}/files`, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: created.headers.location }) })
    t.same([claimed.status, await claimed.json()], [200, [sha256(data)]], `${method} /files claims it`)
  }
  recorder.check(t)
})

t.test('a GET route with allowUpload and the channel starts (its automatic HEAD route derives nothing)', async (t) => {
  const { app, url, wsUrl } = await start(t, (app) => {
    app.get('/gallery', { allowUpload: { file: { accept: 'any', resumable: true } } }, async (request) => ({ uploads: request.uploads !== null }))
  })
  t.same(await (await fetch(`${url}/gallery`)).json(), { uploads: true })
  t.equal((await fetch(`${url}/gallery`, { method: 'HEAD' })).status, 200)
  t.equal(await channelOpens(`${wsUrl}/gallery/ws`), 'open')
  t.equal((await send(`${url}/gallery/tus`, 'OPTIONS')).status, 204)
  t.notOk(app.hasRoute({ method: 'GET', url: '/gallery/ws/ws' }))
})

t.test('routes derive once per prefix: the same path under two prefixes has two endpoints', async (t) => {
  const { url } = await start(t, (app) => {
    const allowUpload = { file: { accept: 'any' as const, resumable: true } }
    app.post('/files', { allowUpload }, consumeAll)
    app.register(async (api) => {
      api.post('/files', { allowUpload }, consumeAll)
      api.put('/files', { allowUpload }, consumeAll)
    }, { prefix: '/api' })
  })
  t.equal((await send(`${url}/files/tus`, 'OPTIONS')).status, 204)
  t.equal((await send(`${url}/api/files/tus`, 'OPTIONS')).status, 204)
})

/** The error that registering these routes gives at startup, if any. */
async function startupError (
  routes: (app: FastifyInstance) => void, options: ChunkedUploadOptions = {}, pluginBefore?: FastifyPluginAsync
): Promise<(Error & { code?: string }) | undefined> {
  const app = Fastify()
  try {
    if (pluginBefore !== undefined) await app.register(pluginBefore)
    await app.register(chunkedUpload, options)
    await app.register(websocket)
    routes(app)
    await app.ready()
    return undefined
  } catch (error) {
    return error as Error
  } finally {
    await app.close()
  }
}

t.test('routes on one path that declare their shared routes differently fail at startup, naming both', async (t) => {
  const file = { accept: 'any' as const, resumable: true }
  const auth = async (): Promise<void> => {}
  const cases: Array<[string, (app: FastifyInstance) => void, ChunkedUploadOptions, RegExp | undefined]> = [
    ['the same name, declared differently', (app) => {
      app.post('/c', { allowUpload: { file } }, consumeAll)
      app.put('/c', { allowUpload: { file: { ...file, maxFileSize: 10 } } }, consumeAll)
    }, {}, /Routes POST \/c and PUT \/c share the resumable endpoint \/c\/tus but differ in the declaration of upload "file"/],
    ['other resumable names', (app) => {
      app.post('/c', { allowUpload: { file } }, consumeAll)
      app.put('/c', { allowUpload: { file, other: file } }, consumeAll)
    }, {}, /differ in upload names \(file \/ file, other\)/],
    ['other hooks', (app) => {
      app.post('/c', { onRequest: auth, allowUpload: { file } }, consumeAll)
      app.put('/c', { allowUpload: { file } }, consumeAll)
    }, {}, /differ in onRequest hooks/],
    ['copies of one hook, made per route', (app) => {
      const authFor = (): (() => Promise<void>) => async function authenticate () {}
      app.post('/c', { onRequest: [auth, authFor()], allowUpload: { file } }, consumeAll)
      app.put('/c', { onRequest: [auth, authFor()], allowUpload: { file } }, consumeAll)
    }, {}, /differ in onRequest hooks \(the same functions, in the same order; these are per-route copies of the same functions: make them once/],
    ['other hooks of as many', (app) => {
      app.post('/c', { onRequest: async function one () {}, allowUpload: { file } }, consumeAll)
      app.put('/c', { onRequest: async () => {}, allowUpload: { file } }, consumeAll)
    }, {}, /differ in onRequest hooks \(the same functions, in the same order\): declare/],
    ['another errorHandler', (app) => {
      app.post('/c', { allowUpload: { file } }, consumeAll)
      app.put('/c', { errorHandler: async (error: FastifyError, _request: FastifyRequest, reply: FastifyReply) => await reply.send(error), allowUpload: { file } }, consumeAll)
    }, {}, /differ in errorHandler/],
    ['other plugins', (app) => {
      app.register(async (a) => { a.post('/c', { allowUpload: { file } }, consumeAll) })
      app.register(async (b) => { b.put('/c', { allowUpload: { file } }, consumeAll) })
    }, {}, /differ in plugin scope/],
    ['the channel serves every name', (app) => {
      app.post('/c', { allowUpload: { file: { accept: 'any' } } }, consumeAll)
      app.put('/c', { allowUpload: { file: { accept: ['.png'] } } }, consumeAll)
    }, { channel: true }, /share the upload channel \/c\/ws but differ in the declaration of upload "file"/],
    ['names that derive nothing may differ', (app) => {
      app.post('/c', { allowUpload: { file, a: { accept: 'any' } } }, consumeAll)
      app.put('/c', { allowUpload: { file, a: { accept: ['.png'] } } }, consumeAll)
    }, {}, undefined],
    ['alike constraints share, a RegExp among them', (app) => {
      app.post('/c', { constraints: { host: /^up\./, version: '1.0.0' }, allowUpload: { file } }, consumeAll)
      app.put('/c', { constraints: { version: '1.0.0', host: /^up\./ }, allowUpload: { file } }, consumeAll)
    }, { channel: true }, undefined],
    ['other constraints derive other routes', (app) => {
      app.post('/c', { constraints: { host: 'a.test' }, allowUpload: { file } }, consumeAll)
      app.post('/c', { constraints: { host: 'b.test' }, allowUpload: { file: { ...file, maxFileSize: 10 } } }, consumeAll)
    }, {}, undefined]
  ]
  for (const [name, routes, options, message] of cases) {
    const error = await startupError(routes, options)
    if (message === undefined) t.equal(error, undefined, name)
    else t.match(error, { code: 'FST_CHUNKED_UPLOAD_ROUTE_CONFLICT', message }, name)
  }
})

t.test('derived routes carry the route\'s constraints: a host-constrained route\'s endpoints answer on its host only', async (t) => {
  const { url, wsUrl } = await start(t, (app) => {
    app.post('/files', { constraints: { host: 'uploads.test' }, allowUpload: { file: { accept: 'any', resumable: true } } }, consumeAll)
  })
  t.equal((await send(`${url}/files/tus`, 'OPTIONS', { ...TUS, host: 'uploads.test' })).status, 204)
  t.equal((await send(`${url}/files/tus`, 'OPTIONS', { ...TUS, host: 'other.test' })).status, 404)
  const creation = { ...TUS, 'upload-length': 10 }
  t.equal((await send(`${url}/files/tus`, 'POST', { ...creation, host: 'other.test' })).status, 404)
  t.equal((await send(`${url}/files/tus`, 'POST', { ...creation, host: 'uploads.test' })).status, 201)
  t.equal(await channelOpens(`${wsUrl}/files/ws`, { host: 'uploads.test' }), 'open')
  t.equal(await channelOpens(`${wsUrl}/files/ws`, { host: 'other.test' }), 'status 404')
})

t.test('derived routes carry the route\'s errorHandler, hooks, bodyLimit and config', async (t) => {
  const seen: string[] = []
  const { url, wsUrl } = await start(t, (app) => {
    const options: RouteShorthandOptions = {
      bodyLimit: 4321,
      // Fastify types a route's config as an interface for apps to augment.
      config: { area: 'files' } as RouteShorthandOptions['config'],
      onRequest: async (request) => {
        seen.push(`onRequest ${request.url} bodyLimit=${request.routeOptions.bodyLimit} area=${String((request.routeOptions.config as { area?: string }).area)}`)
        if (request.headers.authorization !== 'Bearer ok') throw Object.assign(new Error('who are you?'), { statusCode: 401, code: 'APP_UNAUTHORIZED' })
      },
      onSend: async (_request, reply, payload) => {
        reply.header('x-files-route', 'yes')
        return payload
      },
      onError: async (request, _reply, error) => { seen.push(`onError ${request.url} ${String((error as FastifyError).code)}`) },
      onResponse: async (request, reply) => { seen.push(`onResponse ${request.method} ${request.url} ${reply.statusCode}`) },
      errorHandler: (error: FastifyError, _request, reply) => { reply.code(error.statusCode ?? 500).send({ shaped: error.code }) },
      allowUpload: { file: { accept: 'any', resumable: true } }
    }
    app.post('/files', options, consumeAll)
  })
  const authorized = { ...TUS, authorization: 'Bearer ok' }

  const refused = await send(`${url}/files/tus`, 'POST', { ...TUS, 'upload-length': 10 })
  t.same([refused.status, refused.json, refused.headers['x-files-route']], [401, { shaped: 'APP_UNAUTHORIZED' }, 'yes'], 'the route\'s hook and errorHandler')
  const unversioned = await send(`${url}/files/tus`, 'POST', { authorization: 'Bearer ok', 'upload-length': 10 })
  t.same([unversioned.status, unversioned.json], [412, { shaped: 'FST_CHUNKED_UPLOAD_UNSUPPORTED_VERSION' }], 'the endpoint\'s own errors are shaped too')
  const created = await send(`${url}/files/tus`, 'POST', { ...authorized, 'upload-length': 10 })
  t.equal(created.status, 201)
  t.equal(created.headers['x-files-route'], 'yes')
  const upload = new URL(String(created.headers.location), url).pathname
  t.equal((await send(url + upload, 'HEAD', authorized)).status, 200)
  t.equal(await channelOpens(`${wsUrl}/files/ws`), 'status 401')
  t.equal(await channelOpens(`${wsUrl}/files/ws`, { authorization: 'Bearer ok' }), 'open')

  t.ok(seen.includes('onRequest /files/tus bodyLimit=4321 area=files'), 'bodyLimit and config')
  t.ok(seen.includes('onRequest /files/ws bodyLimit=4321 area=files'), 'bodyLimit and config on the channel')
  t.ok(seen.includes('onError /files/tus APP_UNAUTHORIZED'))
  t.ok(seen.includes('onError /files/tus FST_CHUNKED_UPLOAD_UNSUPPORTED_VERSION'))
  for (const line of ['onResponse POST /files/tus 401', 'onResponse POST /files/tus 201', `onResponse HEAD ${upload} 200`]) {
    t.ok(seen.includes(line), line)
  }
})

/**
 * An app's authentication plugin, as many are written: from its onRoute hook, it protects
 * the routes that ask for it by a route option (`auth: true`) or by their schema's
 * `security`. Registered after this plugin, as README advises.
 */
const authPlugin = fp(async (app: FastifyInstance) => {
  app.addHook('onRoute', (route: RouteOptions & { auth?: boolean }) => {
    if (route.auth !== true && (route.schema as { security?: unknown } | undefined)?.security === undefined) return
    route.onRequest = [...hookList(route.onRequest), async (request: FastifyRequest, reply: FastifyReply) => {
      if (request.headers.authorization !== 'secret') return await reply.code(401).send({ denied: true })
    }]
  })
})
const hookList = <T>(hooks: T | T[] | undefined): T[] => hooks === undefined ? [] : [hooks].flat() as T[]

t.test('derived routes carry every route option and the schema\'s documentation: an app\'s auth by route option protects them', async (t) => {
  const recorder = new Recorder()
  const allowUpload: AllowUpload = { file: { accept: 'any', resumable: true, writer: recorder.factory } }
  const app = Fastify()
  await app.register(chunkedUpload, { channel: true })
  await app.register(websocket)
  await app.register(authPlugin)
  // An app's own route option (not one of Fastify's).
  const authenticated = { auth: true, allowUpload }
  app.post('/files', authenticated, consumeAll)
  // Its body schema validates the route's fields, not the endpoint's requests.
  app.post('/docs', { schema: { security: [{ bearer: [] }], body: Type.Object({ title: Type.String() }) }, allowUpload }, consumeAll)
  const { url } = await listen(t, app)
  const wsUrl = url.replace('http:', 'ws:')
  const secret = { authorization: 'secret' }
  for (const path of ['/files', '/docs']) {
    t.equal((await send(`${url}${path}/tus`, 'POST', { ...TUS, 'upload-length': 10 })).status, 401, `${path}/tus without auth`)
    t.equal(await channelOpens(`${wsUrl}${path}/ws`), 'status 401', `${path}/ws without auth`)
    t.equal(await channelOpens(`${wsUrl}${path}/ws`, secret), 'open', `${path}/ws with auth`)
    const data = bytes(10, path.length)
    const created = await send(`${url}${path}/tus`, 'POST', { ...TUS, ...secret, 'upload-length': 10, 'content-type': OCTETS }, data)
    t.equal(created.status, 201, `${path}/tus with auth`)
  }
  await app.close()
  recorder.check(t)
})

/**
 * A plugin like @fastify/compress or @fastify/rate-limit: from its onRoute hook, each route
 * gets hooks of its own (closures over the route), added in place to the route's arrays: an
 * onRequest hook that counts the route's requests and a preParsing hook, put first, that
 * decompresses gzip bodies.
 */
function perRoutePlugin (counts: Map<string, number>): FastifyPluginAsync {
  return fp(async (app) => {
    app.addHook('onRoute', (route) => {
      const onRequest = (request: FastifyRequest, _reply: FastifyReply, done: () => void): void => {
        const key = `${request.method} ${request.routeOptions.url ?? ''}`
        counts.set(key, (counts.get(key) ?? 0) + 1)
        done()
      }
      const gunzip: preParsingAsyncHookHandler = async (request, _reply, payload) => request.headers['content-encoding'] === 'gzip' ? payload.pipe(createGunzip()) : payload
      if (Array.isArray(route.onRequest)) route.onRequest.push(onRequest)
      else route.onRequest = [...hookList(route.onRequest), onRequest]
      if (Array.isArray(route.preParsing)) route.preParsing.unshift(gunzip)
      else route.preParsing = [gunzip, ...hookList(route.preParsing)]
    })
  })
}

t.test('a plugin that adds per-route hooks in place, registered after: each derived route runs them once', async (t) => {
  const recorder = new Recorder()
  const counts = new Map<string, number>()
  const allowUpload = (): AllowUpload => ({ file: { accept: 'any', resumable: true, writer: recorder.factory } })
  const app = Fastify()
  await app.register(chunkedUpload)
  await app.register(perRoutePlugin(counts))
  // Alike routes stay alike: each gets its own copy of the plugin's hooks.
  app.post('/files', { allowUpload: allowUpload() }, consumeAll)
  app.put('/files', { allowUpload: allowUpload() }, consumeAll)
  const { url } = await listen(t, app)

  // Compressible: the gzip body is smaller than the upload.
  const data = Buffer.alloc(1000, 7)
  const created = await send(`${url}/files/tus`, 'POST', { ...TUS, 'upload-length': data.length })
  t.equal(created.status, 201)
  const upload = new URL(String(created.headers.location), url).pathname
  // Decompressed once: 1000 bytes stored, not a gzip stream read as gzip again.
  const patched = await send(url + upload, 'PATCH', { ...TUS, 'upload-offset': 0, 'content-type': OCTETS, 'content-encoding': 'gzip' }, gzipSync(data))
  t.same([patched.status, patched.headers['upload-offset']], [204, '1000'])
  t.equal((await send(`${url}/files/tus`, 'OPTIONS')).status, 204)
  const claimed = await fetch(`${url}/files`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: upload }) })
  t.same([claimed.status, await claimed.json()], [200, [sha256(data)]])
  t.same(Object.fromEntries(counts), {
    'POST /files/tus': 1, [`PATCH ${'/files/tus/:id'}`]: 1, 'OPTIONS /files/tus': 1, 'PUT /files': 1
  }, 'one count per request')
  await app.close()
  recorder.check(t)
})

t.test('a plugin that adds per-route hooks, registered before: startup fails saying to register this plugin first', async (t) => {
  const error = await startupError((app) => {
    app.post('/files', { allowUpload: { file: { accept: 'any', resumable: true } } }, consumeAll)
  }, {}, perRoutePlugin(new Map()))
  t.match(error, {
    code: 'FST_CHUNKED_UPLOAD_PLUGIN_ORDER',
    message: /A plugin registered before fastify-chunked-upload added onRequest hooks to POST \/files from its onRoute hook: they would run twice on \/files\/tus, which it derives\. Register fastify-chunked-upload before that plugin/
  })
  // Routes that derive nothing are not concerned: the plugin's hooks run once there.
  t.equal(await startupError((app) => { app.post('/plain', { allowUpload: { file: { accept: 'any' } } }, consumeAll) }, {}, perRoutePlugin(new Map())), undefined)
})

t.test('routes the router takes for one path share their derived routes', async (t) => {
  const allowUpload = (): AllowUpload => ({ file: { accept: 'any', resumable: true } })
  const cases: Array<[string, FastifyServerOptions, (app: FastifyInstance) => void, string[]]> = [
    ['caseSensitive: false', { routerOptions: { caseSensitive: false } }, (app) => {
      app.post('/Files', { allowUpload: allowUpload() }, consumeAll)
      app.put('/files', { allowUpload: allowUpload() }, consumeAll)
    }, ['/files', '/FILES']],
    ['parameters by position, not name', {}, (app) => {
      app.post('/u/:id/files', { allowUpload: allowUpload() }, consumeAll)
      app.put('/u/:userId/files', { allowUpload: allowUpload() }, consumeAll)
      // Another pattern is another path, and so is an escaped colon.
      app.post('/u/:id(^\\d+)/docs', { allowUpload: allowUpload() }, consumeAll)
      app.put('/u/:id/docs', { allowUpload: { ...allowUpload(), other: { accept: 'any', resumable: true } } }, consumeAll)
      app.post('/at::now/files', { allowUpload: allowUpload() }, consumeAll)
    }, ['/u/7/files', '/u/7/docs', '/u/x/docs', '/at:now/files']],
    ['ignoreDuplicateSlashes', { routerOptions: { ignoreDuplicateSlashes: true } }, (app) => {
      app.post('//files', { allowUpload: allowUpload() }, consumeAll)
      app.put('/files', { allowUpload: allowUpload() }, consumeAll)
    }, ['/files', '//files']]
  ]
  for (const [name, serverOptions, routes, paths] of cases) {
    const app = Fastify(serverOptions)
    await app.register(chunkedUpload, { channel: true })
    await app.register(websocket)
    routes(app)
    const { url } = await listen(t, app)
    for (const path of paths) {
      t.equal((await send(`${url}${path}/tus`, 'OPTIONS')).status, 204, `${name}: ${path}/tus`)
      t.equal(await channelOpens(`${url.replace('http:', 'ws:')}${path}/ws`), 'open', `${name}: ${path}/ws`)
    }
    await app.close()
  }
})

t.test('an upload route on a wildcard path derives nothing: with a channel or resumable names, startup says why', async (t) => {
  const resumable = await startupError((app) => { app.post('/any/*', { allowUpload: { file: { accept: 'any', resumable: true } } }, consumeAll) })
  t.match(resumable, { code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG', message: /POST \/any\/\* has a wildcard path, under which its channel and resumable endpoint cannot be/ })
  t.match(await startupError((app) => { app.post('/any/*', { allowUpload: { file: { accept: 'any' } } }, consumeAll) }, { channel: true }), { code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG' })
  // Plain uploads on a wildcard path work as on any path.
  const { url } = await start(t, (app) => {
    app.post('/plain/*', { allowUpload: { file: { accept: 'any' } } }, async (request) => await request.uploads.consume('file', (meta: { size: number }) => meta.size))
  }, { channel: false })
  const response = await fetch(`${url}/plain/some/where`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: bytes(100, 1) })
  t.same([response.status, await response.json()], [200, [100]])
})
