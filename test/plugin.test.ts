// Registration, option validation, and how upload routes sit among ordinary ones.
import t from 'tap'
import Fastify from 'fastify'
import { Type } from 'typebox'
import chunkedUpload, { MemoryWriter, errors } from '../lib/index.js'
import { Recorder, listen, multipart, startApp } from './kit/index.js'

async function registrationError (options: unknown, route?: Record<string, unknown>): Promise<Error | undefined> {
  const app = Fastify()
  try {
    await app.register(chunkedUpload, options as object)
    if (route !== undefined) app.post('/profile', { allowUpload: route as never }, async () => 'ok')
    await app.ready()
  } catch (error) {
    return error as Error
  } finally {
    await app.close()
  }
  return undefined
}

t.test('bad allowUpload configs fail at registration, naming the route and the key', async (t) => {
  const cases: Array<[Record<string, unknown> | unknown, RegExp]> = [
    [{ avatar: { accept: ['.png'], maxFileSise: 5 } }, /allowUpload\.avatar of POST \/profile: unknown option "maxFileSise"/],
    [{ avatar: { maxEntries: 2 } }, /allowUpload\.avatar of POST \/profile: missing option "accept"/],
    [{ avatar: { accept: [] } }, /"accept" must be 'any' or a non-empty list of "\.ext", "type\/subtype", "type\/\*" \(got \[\]\)/],
    [{ avatar: { accept: ['png'] } }, /"accept\.0" must be 'any' or a non-empty list of "\.ext", "type\/subtype", "type\/\*" \(got "png"\)/],
    [{ avatar: { accept: 'any', maxEntries: 0 } }, /"maxEntries" must be >= 1/],
    [{ avatar: { accept: 'any', onEntryError: 'ignore' } }, /"onEntryError" must be 'fail' or 'continue' \(got "ignore"\)/],
    [{ avatar: { accept: 'any', writer: 'tmp' } }, /"writer"/],
    [{ avatar: 'yes' }, /allowUpload\.avatar of POST \/profile must be an object/],
    [{}, /allowUpload of POST \/profile declares no upload name/],
    [['avatar'], /allowUpload of POST \/profile must be an object of upload names/],
    [{ constructor: { accept: 'any' } }, /"constructor" cannot be an upload name/]
  ]
  for (const [route, message] of cases) {
    const error = await registrationError({}, route as Record<string, unknown>)
    t.match(error?.message, message, JSON.stringify(route))
    t.equal((error as { code?: string })?.code, 'FST_CHUNKED_UPLOAD_INVALID_CONFIG')
  }
  t.equal(await registrationError({}, { avatar: { accept: ['.png', 'image/webp', 'video/*'] } }), undefined, 'a good config registers')
})

t.test('plugin options are validated', async (t) => {
  t.match((await registrationError({ tmpdir: '/tmp' }))?.message, /unknown option "tmpdir"/)
  t.match((await registrationError({ maxFields: -1 }))?.message, /"maxFields" must be >= 0/)
  t.match((await registrationError({ defaults: { chunkSize: 0 } }))?.message, /"defaults.chunkSize"/)
})

t.test('registering twice is a clear error', async (t) => {
  const app = Fastify()
  await app.register(chunkedUpload)
  await t.rejects(async () => { await app.register(chunkedUpload) }, { code: 'FST_CHUNKED_UPLOAD_ALREADY_REGISTERED' })
  await app.close()
})

t.test('a route registered before the plugin is an ordinary route: Fastify\'s own 415 for a file', async (t) => {
  // The plugin sees routes through onRoute only, and registers nothing scope-wide.
  const app = Fastify()
  app.post('/early', { allowUpload: { f: { accept: 'any' } } }, async () => 'handler ran')
  await app.register(chunkedUpload)
  const { url } = await listen(t, app)
  const { body, contentType } = multipart([{ name: 'f', filename: 'a', data: 'x' }])
  const response = await fetch(`${url}/early`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 415)
  t.equal((await response.json() as { code: string }).code, 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
})

t.test('registering the plugin adds no content-type parser to the scope', async (t) => {
  const app = Fastify()
  await app.register(chunkedUpload)
  app.post('/up', { allowUpload: { f: { accept: 'any' } } }, async () => 'ok')
  await app.ready()
  t.notOk(app.hasContentTypeParser('*'))
  t.notOk(app.hasContentTypeParser('multipart/form-data'))
  await app.close()
})

t.test('ordinary routes keep Fastify behaviour; JSON to an upload route is a JSON body', async (t) => {
  const { url } = await startApp(t, (app) => {
    app.post('/plain', async (request) => ({ body: request.body, uploads: request.uploads }))
    app.post('/up', { allowUpload: { f: { accept: 'any', writer: () => MemoryWriter } } }, async (request) => ({ body: request.body }))
  })
  const json = await fetch(`${url}/plain`, { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } })
  t.same(await json.json(), { body: { a: 1 }, uploads: null })
  const octet = await fetch(`${url}/plain`, { method: 'POST', body: 'x', headers: { 'content-type': 'application/octet-stream' } })
  t.equal(octet.status, 415)
  t.equal((await octet.json() as { code: string }).code, 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
  const upJson = await fetch(`${url}/up`, { method: 'POST', body: '{"refs":["x"]}', headers: { 'content-type': 'application/json' } })
  t.same(await upJson.json(), { body: { refs: ['x'] } })
})

t.test('text fields are validated by the route body schema', async (t) => {
  const { app } = await startApp(t, (app) => {
    app.post('/s', {
      allowUpload: { f: { accept: 'any', writer: () => MemoryWriter } },
      schema: { body: Type.Object({ title: Type.String({ minLength: 3 }) }) }
    }, async (request) => ({ body: request.body }))
  })
  const good = multipart([{ name: 'title', data: 'hello' }, { name: 'f', filename: 'a', data: 'x' }])
  const ok = await app.inject({ method: 'POST', url: '/s', payload: good.body, headers: { 'content-type': good.contentType } })
  t.same(ok.json(), { body: { title: 'hello' } })
  const bad = multipart([{ name: 'title', data: 'hi' }, { name: 'f', filename: 'a', data: 'x' }])
  const refused = await app.inject({ method: 'POST', url: '/s', payload: bad.body, headers: { 'content-type': bad.contentType } })
  t.equal(refused.statusCode, 400)
  t.equal(refused.json().code, 'FST_ERR_VALIDATION')
})

t.test("onEntryError 'continue' (plugin-wide default): the handler sees errors and consumes the rest", async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/form', {
      allowUpload: {
        pics: { accept: ['image/*'], maxEntries: 3, maxFileSize: 100, writer: recorder.factory, validate: (entry) => entry.clientName.startsWith('bad') ? 'bad_name' : undefined },
        docs: { accept: ['.pdf'], writer: () => MemoryWriter }
      }
    }, async (request) => {
      const ok = await request.uploads.consume('pics', (_meta, entry) => entry.clientName)
      return { ok, errors: request.uploads.errors().map((e) => [e.clientName, e.code]), all: request.uploads.errors('pics').length }
    })
  }, { defaults: { onEntryError: 'continue' } })
  const { body, contentType } = multipart([
    { name: 'pics', filename: 'good.png', type: 'image/png', data: 'png' },
    { name: 'pics', filename: 'doc.pdf', type: 'application/pdf', data: 'pdf' },
    { name: 'pics', filename: 'huge.png', type: 'image/png', data: 'x'.repeat(500) },
    { name: 'pics', filename: 'bad.png', type: 'image/png', data: 'png' },
    { name: 'pics', filename: 'fine.png', type: 'image/png', data: 'png' },
    { name: 'pics', filename: 'third.png', type: 'image/png', data: 'png' },
    { name: 'docs', filename: 'fine.pdf', data: 'pdf' }
  ])
  const response = await fetch(`${url}/form`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.same(await response.json(), {
    ok: ['good.png', 'fine.png'],
    errors: [['doc.pdf', 'not_accepted'], ['huge.png', 'too_large'], ['bad.png', 'bad_name'], ['third.png', 'too_many_files']],
    all: 4
  })
  t.same(recorder.reasons(), ['done', 'cancel', 'done'])
  recorder.check(t)
})

t.test('validate refusing an entry fails the request with 422 by default', async (t) => {
  const { url } = await startApp(t, (app) => {
    app.post('/v', { allowUpload: { f: { accept: 'any', validate: async () => 'nope' } } }, async () => 'ran')
  })
  const { body, contentType } = multipart([{ name: 'f', filename: 'a', data: 'x' }])
  const response = await fetch(`${url}/v`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 422)
  t.equal((await response.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_INVALID')
})

t.test('progress is reported from accepted bytes, and at the end', async (t) => {
  const seen: Array<[string, number, string]> = []
  const { url } = await startApp(t, (app) => {
    app.put('/p', {
      allowUpload: {
        f: {
          accept: 'any',
          chunkSize: 1000,
          writer: () => MemoryWriter,
          progress: (name, entry) => {
            seen.push([name, entry.progress, entry.status])
            if (entry.progress === 50) throw new Error('a failing progress callback is only logged')
          }
        }
      }
    }, async () => 'ok')
  })
  const response = await fetch(`${url}/p`, { method: 'PUT', body: Buffer.alloc(10_000), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(response.status, 200)
  const values = seen.map(([, progress]) => progress)
  t.ok(values.every((v, i) => i === 0 || v >= values[i - 1]!), 'never goes back')
  t.same(seen.at(-1), ['f', 100, 'done'])
  t.ok(seen.length >= 2)
})

t.test('request.uploads API: entries, consumeEntry, postpone, cancel', async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/api', { allowUpload: { f: { accept: 'any', maxEntries: 3, writer: recorder.factory } } }, async (request) => {
      const { uploads } = request
      const [first, second, third] = uploads.entries('f').completed
      const postponed = await uploads.consumeEntry(first!.ref, (meta: { bytes: number }) => ({ postpone: meta.bytes }))
      await t.rejects(uploads.consumeEntry(second!.ref, () => { throw new Error('consumer failed') }), /consumer failed/)
      const again = await uploads.consume('f', (meta: { bytes: number }, entry) => `${entry.clientName}:${meta.bytes}`)
      await uploads.cancel(third!.ref)
      await uploads.cancel('no-such-ref')
      const missing = await uploads.consumeEntry(second!.ref, () => 'twice').catch((error: { code: string, statusCode: number }) => [error.code, error.statusCode])
      return { postponed, again, missing, left: uploads.entries('f'), none: uploads.entries('other') }
    })
  })
  const { body, contentType } = multipart([1, 2, 3].map((i) => ({ name: 'f', filename: `${i}.bin`, data: 'x'.repeat(i) })))
  const response = await fetch(`${url}/api`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.same(await response.json(), {
    postponed: 1,
    again: ['1.bin:1', '3.bin:3'],
    missing: ['FST_CHUNKED_UPLOAD_UNKNOWN_ENTRY', 404],
    left: { completed: [], inProgress: [] },
    none: { completed: [], inProgress: [] }
  })
  recorder.check(t)
})

t.test('errors are exported with their codes and statuses', async (t) => {
  t.equal(new errors.TooLargeError('a', 'b', 1).statusCode, 413)
  t.equal(new errors.TooManyFilesError('a', 1).statusCode, 413)
  t.equal(new errors.NotAcceptedError('a', 'b', 'c').statusCode, 415)
  t.equal(new errors.UnexpectedFieldError('a', 'b').statusCode, 400)
  t.equal(new errors.MalformedError('x').statusCode, 400)
  t.equal(new errors.PrematureCloseError().statusCode, 400)
  t.equal(new errors.ChunkTimeoutError(1).statusCode, 408)
  t.equal(new errors.WriterFailureError('a').statusCode, 500)
})

t.test('a throwing validate is a 500 that keeps its message on the server', async (t) => {
  const { url } = await startApp(t, (app) => {
    app.post('/v', { allowUpload: { f: { accept: 'any', validate: async () => { throw new Error('db password=hunter2') } } } }, async () => 'ran')
  })
  const { body, contentType } = multipart([{ name: 'f', filename: 'a', data: 'x' }])
  const response = await fetch(`${url}/v`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 500)
  const json = await response.json() as { code: string, message: string }
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_VALIDATE_FAILURE')
  t.notMatch(json.message, /hunter2/)
})

t.test('text fields together may not exceed the route bodyLimit', async (t) => {
  const { url } = await startApp(t, (app) => {
    app.post('/fields', { bodyLimit: 100, allowUpload: { f: { accept: 'any' } } }, async () => 'ok')
  })
  const { body, contentType } = multipart([{ name: 'a', data: 'x'.repeat(60) }, { name: 'b', data: 'y'.repeat(60) }])
  const response = await fetch(`${url}/fields`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 413)
  t.equal((await response.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_FIELDS_TOO_LARGE')
})

t.test('timeouts beyond what a Node timer holds are refused at registration', async (t) => {
  t.match((await registrationError({}, { f: { accept: 'any', chunkTimeout: 3e9 } }))?.message, /"chunkTimeout" must be <= 2147483647/)
})
